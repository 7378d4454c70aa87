"""MLflow against a real tracking server: each test starts `mlflow server` on 127.0.0.1 (SQLite backend, an artifact
folder the server proxies uploads and downloads into, one worker; tests/support/mlflow_server.py) and reruns part of
the session's shrunken grid (tests/support/grid.py: a copy with those runs removed) through `snakemake` with
MLFLOW_TRACKING_URI pointing at it, MLflow logging live from every job. The runs, their nesting, params, per-epoch
metric histories and artifacts are read back through the MLflow client, over HTTP.

- the runs against a running server: everything arrives live, and the artifacts land in the server's folder;
- the server killed while the first training run is mid-way and started again on the same port and store a
  few seconds later: the pipeline completes, then `python -m prompt_ot mlflow sync` logs what was missed, and
  afterwards every run is there once, complete (the half-logged ones are replaced, not duplicated);
- the race in that test where the pipeline ends before the server is back, in process: the parent run's end
  waits in its file until `mlflow sync` (or the next pipeline) applies it.

The reruns: zero-shot CLIP and Prompt-OT (a run without epochs, and one with per-epoch metrics), seed 1, targets the
evaluations (not the report). Each test skips with one line where the server cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.forkserver import FORKED
from tests.support.grid import EPOCHS, EXPERIMENT, HISTORY_KEYS, SHOTS, run_dir
from tests.support.mlflow_server import MlflowServer, free_port
from tests.support.workflow import SNAKEMAKE, copy_workspace, env, mlflow_client, summary

METHODS = ["zeroshot", "prompt_ot"]  # a run without epochs, and one with per-epoch metrics
TRAIN_ARTIFACTS = ["prompts.safetensors", "train.json", "train.log"]
EVALUATE_ARTIFACTS = ["metrics.json", "predictions.npz"]


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server", free_port())
    try:
        problem = server.start()
        if problem:
            pytest.skip(f"mlflow server cannot start here: {problem}")
        yield server
    finally:
        server.stop()


def server_grid(grid: Path, folder: Path, seeds: list[int]) -> Path:
    """A copy of the grid without the runs of METHODS for ``seeds`` and without its MLflow store: the pipeline
    redoes those runs, logging to the server."""
    runs = [run_dir(m, s) for m in METHODS for s in seeds]
    return copy_workspace(grid, folder, *runs, "mlflow.db", "mlartifacts", "runs/mlflow_parent.json")


def snakemake(seeds: list[int]) -> list[str]:
    """The evaluations as targets: the report's tables add nothing to what MLflow receives. The targets come
    first: --resources takes several values. Jobs are forked from the fork server, as `make demo` runs them."""
    targets = [f"{run_dir(m, s)}/metrics.json" for m in METHODS for s in seeds]
    return [*FORKED, *SNAKEMAKE, *targets, "--cores", "2", "--resources", "gpu=2"]


def check_runs_complete(client, folder: Path, seeds: list[int], epochs: int, download: Path) -> dict:
    """One FINISHED pipeline parent run; under it, once each, a FINISHED train and evaluate run per (method, seed)
    with its params, every epoch's metrics as train.json has them, and its artifacts, byte-identical to the run
    folder's files. Returns the runs by (kind, method, seed)."""
    from prompt_ot.tracking import flatten_params

    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT} on the server"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent_info = json.loads((folder / "runs/mlflow_parent.json").read_text())
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert [p.info.run_id for p in parents] == [parent_info["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("kind") != "pipeline"]
    keys = [(r.data.tags.get("kind"), r.data.tags.get("method"), r.data.tags.get("seed")) for r in children]
    expected = {(kind, m, str(s)) for kind in ("train", "evaluate") for m in METHODS for s in seeds}
    assert sorted(keys) == sorted(expected), "a run is missing or logged twice"
    assert all(r.info.status == "FINISHED" for r in children), [(r.info.run_name, r.info.status) for r in children]
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)

    for run, (kind, method, seed) in zip(children, keys):
        where = folder / run_dir(method, seed)
        params = run.data.params
        if kind == "train":
            trained = summary(folder, run_dir(method, seed))
            assert params["seed"] == seed and params["method.name"] == method and params["pack"] == "1"
            logged_recipe = {k: v for k, v in params.items() if k.startswith("recipe.")}
            assert logged_recipe == flatten_params({"recipe": trained["recipe"]})  # every recipe value
            assert {"recipe.name", "recipe.epochs", "recipe.lr", "recipe.batch_size"} <= set(logged_recipe)
            history = trained["history"]
            assert len(history) == (epochs if method != "zeroshot" else 0)  # zero-shot CLIP trains nothing
            for key in HISTORY_KEYS:  # the full history: one value per epoch, not only the last
                logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                assert logged == [(r["epoch"], r[key]) for r in history], (run.info.run_name, key)
            names = TRAIN_ARTIFACTS
        else:
            metrics = json.loads((where / "metrics.json").read_text())
            trained = summary(folder, run_dir(method, seed))
            assert params["tested_epoch"] == str(trained["eval_epoch"]) == str(metrics["epoch"])
            assert params["recipe.name"] == trained["recipe"]["name"]
            assert params["prompts"].endswith("prompts.safetensors")
            per_class = {  # balanced accuracy and macro-F1 of each evaluated subset, as metrics.json has them
                f"{name}/{key}": values[name]
                for key, values in metrics["class_metrics"].items()
                for name in ("balanced_accuracy", "macro_f1")
            }
            assert (
                run.data.metrics
                == {
                    "accuracy/base": metrics["accuracy"]["base"],
                    "accuracy/novel": metrics["accuracy"]["novel"],
                    "hm": metrics["hm"],
                }
                | per_class
            )
            names = EVALUATE_ARTIFACTS
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == names, run.info.run_name
        for name in names:
            got = client.download_artifacts(run.info.run_id, name, str(download / run.info.run_id))
            assert Path(got).read_bytes() == (where / name).read_bytes(), (run.info.run_name, name)
    return {key: run for key, run in zip(keys, children)}


@pytest.mark.system
def test_shrunken_grid_logs_live_to_a_real_mlflow_server(shrunken_grid, mlflow_server, tmp_path):
    seeds, epochs = [1], EPOCHS
    folder = server_grid(shrunken_grid, tmp_path / "grid", seeds)
    result = subprocess.run(
        snakemake(seeds),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env=env(MLFLOW_TRACKING_URI=mlflow_server.uri),
    )
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "warning: MLflow" not in result.stderr, result.stderr[-3000:]
    assert not list(folder.rglob("mlflow_pending_*.json")), "a job fell back to a pending record"
    assert json.loads((folder / "runs/mlflow_parent.json").read_text())["tracking_uri"] == mlflow_server.uri
    runs = check_runs_complete(mlflow_client(mlflow_server.uri), folder, seeds, epochs, tmp_path / "download")
    assert not any("prompt_ot.logged_late" in r.data.tags for r in runs.values())  # all of it live
    # nothing went to a local store: the artifacts went over HTTP into the server's own folder
    assert not (folder / "mlflow.db").exists() and not (folder / "mlartifacts").exists()
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert set(TRAIN_ARTIFACTS + EVALUATE_ARTIFACTS) <= stored


@pytest.mark.system
def test_server_stopped_mid_training_and_restarted_loses_nothing_after_sync(shrunken_grid, mlflow_server, tmp_path):
    seeds, epochs = [1], EPOCHS
    folder = server_grid(shrunken_grid, tmp_path / "grid", seeds)
    log_path = tmp_path / "snakemake.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            snakemake(seeds),
            cwd=folder,
            env=env(MLFLOW_TRACKING_URI=mlflow_server.uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # the first Prompt-OT training run logging live: its first epoch is in its log, its run on the server
        deadline, interrupted = time.monotonic() + 300, None
        while interrupted is None:
            assert proc.poll() is None, "the pipeline ended before training started:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training run reached its first epoch"
            for train_log in folder.glob(f"{run_dir('prompt_ot', '*')}/train.log"):
                live = (train_log.parent / "mlflow_live_train.json").exists()
                if live and f"epoch 1/{epochs}" in train_log.read_text():
                    interrupted = train_log.parent
            time.sleep(0.02)
        # hard (a crash, a host going away): gone at once, mid-training; a SIGTERM lets uvicorn drain its
        # connections first, which took 8 s on a loaded 2-core machine, long enough for the run to go on logging
        mlflow_server.stop(hard=True)
        assert not (interrupted / "train.json").exists(), "the server went down only after the run had ended"
        time.sleep(3)
        problem = mlflow_server.start()
        assert problem is None, f"the server did not start again: {problem}"
        proc.wait(timeout=300)  # jobs that met the dead server must not wait on it for ever
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, f"snakemake failed:\n{output[-4000:]}"
    assert all((folder / run_dir(m, s) / "metrics.json").exists() for m in METHODS for s in seeds)
    warned = (folder / f"runs/logs/train/base2novel_prompt_ot_digits_{SHOTS}shot_{interrupted.name}.log").read_text()
    assert "warning: MLflow tracking" in warned and "mlflow_pending_train.json" in warned  # noticed, went on
    pending = sorted(folder.rglob("mlflow_pending_*.json"))
    records = {p: json.loads(p.read_text()) for p in pending}
    # the run that was live when the server went down fell back to a record, naming its half-logged run (jobs
    # that started while it was down have records too; those that started after it came back logged live)
    assert records[interrupted / "mlflow_pending_train.json"]["partial_run_id"], "the run did not fall back"
    # the pipeline may end before the server is back (it takes 15-40 s to start here): its `mlflow finish` then
    # records the end in the parent file, and the sync below applies it
    parent_record = json.loads((folder / "runs/mlflow_parent.json").read_text())
    assert ("pending_end" in parent_record) == ("could not end the MLflow parent run" in output)

    synced = subprocess.run(
        [sys.executable, "-m", "prompt_ot", "mlflow", "sync", "runs", "--project-root", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env=env(MLFLOW_TRACKING_URI=mlflow_server.uri),
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"synced {len(pending)} of {len(pending)} pending runs" in synced.stdout
    assert not list(folder.rglob("mlflow_pending_*.json"))
    client = mlflow_client(mlflow_server.uri)
    runs = check_runs_complete(client, folder, seeds, epochs, tmp_path / "download")
    late = {k for k, r in runs.items() if r.data.tags.get("prompt_ot.logged_late") == "true"}
    assert len(late) == len(pending)
    # the half-logged runs were replaced by the synced ones (deleted, so no search shows them twice)
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(EXPERIMENT)
    deleted = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    partial = {r["partial_run_id"] for r in records.values() if r["partial_run_id"]}
    assert {r.info.run_id for r in deleted} == partial


def test_a_parent_run_whose_finish_missed_the_store_is_ended_as_it_ended(tmp_path, monkeypatch, capsys):
    """The pipeline's last job done, its `mlflow finish` meets a dead server (the race in the test above when the
    server comes back late): the end is recorded in the parent file, and the next `mlflow sync` (or the next
    pipeline's `mlflow init`) ends the run FINISHED at that time, not KILLED as if the pipeline had been killed."""
    from prompt_ot import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a SQLite store in tmp_path, down on demand
    real_client = tracking.store._client

    def down(uri):
        raise ConnectionError("the tracking server is down")

    runs = tmp_path / "runs"
    runs.mkdir()
    parent_file = runs / "mlflow_parent.json"

    def finish_while_down() -> tuple[str, dict]:
        run_id = json.loads(parent_file.read_text())["parent_run_id"]
        monkeypatch.setattr(tracking.store, "_client", down)
        assert tracking.finish(parent_file) is None
        monkeypatch.setattr(tracking.store, "_client", real_client)
        assert f"mlflow sync {runs}` ends it FINISHED" in capsys.readouterr().err
        return run_id, json.loads(parent_file.read_text())["pending_end"]

    first = tracking.prepare(tmp_path, experiment=EXPERIMENT, out=parent_file)
    client = real_client(first["tracking_uri"])
    run_id, pending_end = finish_while_down()
    assert pending_end["status"] == "FINISHED" and client.get_run(run_id).info.status == "RUNNING"
    tracking.prepare(tmp_path, experiment=EXPERIMENT, out=parent_file)  # the next pipeline
    ended = client.get_run(run_id)
    assert (ended.info.status, ended.info.end_time) == ("FINISHED", pending_end["end_time"])
    assert tracking.ABANDONED_TAG not in ended.data.tags

    run_id, pending_end = finish_while_down()
    assert tracking.sync_pending(runs, tmp_path) == []  # no pending run, only the parent's end
    ended = client.get_run(run_id)
    assert (ended.info.status, ended.info.end_time) == ("FINISHED", pending_end["end_time"])
    assert "pending_end" not in json.loads(parent_file.read_text())
