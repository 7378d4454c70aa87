"""Reliability end to end, through the real pipeline and CLI: a training job killed with SIGKILL resumes to the
same numbers under `snakemake --rerun-incomplete` and `dvc repro`; killed builds leave nothing that looks complete and
their leftovers are cleaned by the next build; the same grid run twice from scratch gives byte-identical metrics and
tables; parallel training jobs lose nothing in MLflow; an unreachable MLflow costs nothing but one warning and a later
`mlflow sync`.

The pipeline tests read the session's shrunken grid (tests/support/grid.py: built once by Snakemake, four jobs at a
time, MLflow logging live from every job). The crash tests work on copies of it with one run and the report removed,
so that only the killed job and what depends on it run again; the determinism test (slow) runs the grid a second time
from scratch in another folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.forkserver import FORKED
from tests.support.grid import (
    EPOCHS,
    EVALUATIONS_PER_SEED,
    EXPERIMENT,
    FEW_SHOT_METHODS,
    HISTORY_KEYS,
    KILLED,
    METHODS,
    SEEDS,
    SHOTS,
    TRAINED,
    TRAININGS_PER_SEED,
    build,
)
from tests.support.grid import run_dir as grid_run
from tests.support.workflow import (
    DVC,
    MLFLOW_OFF,
    PROMPT_OT,
    ROOT,
    SNAKEMAKE,
    adopt_done_stages,
    artifact_bytes,
    copy_workspace,
    env,
    files_of,
    mlflow_client,
    run,
    summary,
    tables_of,
    without_seconds,
)

METRICS = f"runs/base2novel/*/digits_{SHOTS}shot/seed*/metrics.json"


def metrics_of(folder: Path) -> dict[str, bytes]:
    return files_of(folder, METRICS)


# ---------------------------------------------------------------- determinism


@pytest.mark.slow  # a second full grid (~90 s); test_e2e compares two from-scratch runs (Snakemake, DVC) by default
def test_the_grid_run_twice_from_scratch_gives_byte_identical_metrics_and_tables(shrunken_grid, tmp_path):
    from prompt_ot.checkpoint import load_prompts

    second = build(tmp_path / "again")
    first = metrics_of(shrunken_grid)
    assert len(first) == len(METHODS) * len(SEEDS) and len(set(first.values())) == len(first)
    assert first == metrics_of(second), "two runs of the same grid gave different metrics files"
    tables = tables_of(shrunken_grid)
    assert "base2novel_average.csv" in tables and b"prompt_ot" in tables["base2novel_average.csv"]
    assert tables == tables_of(second), "two runs of the same grid gave different CSV tables"
    for run_dir in (grid_run(m, s) for m in TRAINED for s in SEEDS):
        a, b = summary(shrunken_grid, run_dir), summary(second, run_dir)
        assert a["resumed_from_epoch"] == b["resumed_from_epoch"] == 0  # both ran from scratch
        assert len(a["history"]) == EPOCHS and without_seconds(a["history"]) == without_seconds(b["history"])
        regularised = any(r["regulariser"] > 0 for r in a["history"])
        assert regularised == (a["method"] in ("prompt_ot", "promptsrc"))  # OT, and PromptSRC's consistency terms
        (prompts_a, meta_a), (prompts_b, meta_b) = (
            load_prompts(g / run_dir / "prompts.safetensors") for g in (shrunken_grid, second)
        )
        assert meta_a == meta_b and prompts_a.keys() == prompts_b.keys()
        assert all(prompts_a[k].equal(prompts_b[k]) for k in prompts_a)


# ---------------------------------------------------------------- crash and resume


def start_and_kill_mid_training(cmd, folder: Path, **extra_env) -> dict:
    """Start the pipeline in its own process group; once the killed run's first epoch is checkpointed, SIGKILL
    the whole group (the tool and its jobs, or the fork server, the tool, its jobs and their forks) and wait until
    every process of it is gone. Returns the checkpoint's
    metadata at the kill."""
    checkpoint = folder / KILLED / "checkpoint.safetensors"
    with open(folder / "killed_run.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env(**extra_env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while not checkpoint.exists():
                assert proc.poll() is None, (
                    f"{cmd} ended before training started:\n" + (folder / "killed_run.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:  # a failed assertion above: do not leave the pipeline running
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 60
    while True:  # the jobs are killed with the tool, not left running as orphans
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the killed pipeline are still running"
        time.sleep(0.05)
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as fh:
        return fh.metadata()


def check_killed_mid_run(folder: Path, meta: dict) -> int:
    """The kill came after epoch 1 and before the end; nothing of the run looks complete."""
    epoch = int(meta["epoch"])
    assert 1 <= epoch < EPOCHS, f"the job was not killed mid-run (checkpoint at epoch {epoch} of {EPOCHS})"
    for output in ("train.json", "prompts.safetensors", "metrics.json"):
        assert not (folder / KILLED / output).exists(), f"a killed job left {output}"
    return epoch


def check_resumed(folder: Path, reference: Path, killed_at: int) -> None:
    resumed, uninterrupted = summary(folder, KILLED), summary(reference, KILLED)
    assert resumed["resumed_from_epoch"] == killed_at > 0, "the rerun did not resume from the checkpoint"
    assert uninterrupted["resumed_from_epoch"] == 0
    assert without_seconds(resumed["history"]) == without_seconds(uninterrupted["history"])
    assert metrics_of(folder) == metrics_of(reference), "the resumed run gave other metrics than an uninterrupted one"
    assert tables_of(folder) == tables_of(reference)


def test_snakemake_job_killed_mid_training_resumes_under_rerun_incomplete(shrunken_grid, tmp_path):
    """With MLflow recording live: the killed job's run and the killed pipeline's parent run, left RUNNING by
    the kill, are ended KILLED by the rerun, which records complete runs of its own."""
    folder = copy_workspace(
        shrunken_grid,
        tmp_path / "snakemake",
        KILLED,
        "reports/tables",
        "reports/figures",
        "mlflow.db",
        "mlartifacts",
        "runs/mlflow_parent.json",
    )
    snakemake = [*FORKED, *SNAKEMAKE, "--cores", "2", "--resources", "gpu=2"]  # jobs forked, as `make demo` runs
    meta = start_and_kill_mid_training(snakemake, folder)
    killed_at = check_killed_mid_run(folder, meta)
    live = json.loads((folder / KILLED / "mlflow_live_train.json").read_text())
    # a SIGKILLed Snakemake cannot remove its lock; --unlock is its documented step after a kill
    run([*SNAKEMAKE, "--unlock"], folder)
    run([*snakemake, "--rerun-incomplete"], folder)
    check_resumed(folder, shrunken_grid, killed_at)

    client = mlflow_client(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0].experiment_id)
    status = {
        (r.data.tags.get("kind"), r.info.run_name): r.info.status for r in runs if r.info.run_id != live["run_id"]
    }
    killed = client.get_run(live["run_id"])
    assert (
        killed.info.status == "KILLED" and "ended without closing it" in killed.data.tags["prompt_ot.ended_as_killed"]
    )
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"], status
    assert [k for k, v in status.items() if v != "FINISHED" and k[0] != "pipeline"] == [], status
    assert ("train", killed.info.run_name) in status  # the rerun recorded the run again, complete
    assert not (folder / KILLED / "mlflow_live_train.json").exists()
    (rerun,) = [r for r in runs if r.info.run_name == killed.info.run_name and r.info.run_id != live["run_id"]]
    assert rerun.data.tags["resumed_from_epoch"] == str(killed_at)
    losses = sorted((m.step, m.value) for m in client.get_metric_history(rerun.info.run_id, "loss"))
    history = summary(folder, KILLED)["history"]
    assert losses == [(r["epoch"], r["loss"]) for r in history] and len(losses) == EPOCHS  # every epoch
    log = (folder / KILLED / "train.log").read_text()
    assert log.count("\n== ") + log.startswith("== ") == 2  # the killed attempt, then the resumed one
    assert f"resuming from the checkpoint after epoch {killed_at} of {EPOCHS}" in log


def test_dvc_stage_killed_mid_training_resumes_under_dvc_repro(shrunken_grid, tmp_path):
    redo = ["train_base2novel@prompt_ot-digits-1", "evaluate_base2novel@prompt_ot-digits-1", "report"]
    folder = copy_workspace(shrunken_grid, tmp_path / "dvc", KILLED, "reports/tables", "reports/figures")
    adopt_done_stages(folder, redo)  # DVC takes the stages that are done as done; the rest is to be redone
    meta = start_and_kill_mid_training([*FORKED, *DVC, "repro"], folder, **MLFLOW_OFF)
    killed_at = check_killed_mid_run(folder, meta)
    result = run([*FORKED, *DVC, "repro"], folder, **MLFLOW_OFF)
    assert sorted(
        line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")
    ) == sorted(redo)
    check_resumed(folder, shrunken_grid, killed_at)
    assert "up to date" in run([*DVC, "status", "dvc.yaml"], folder, **MLFLOW_OFF).stdout


# ---------------------------------------------------------------- concurrency: parallel jobs, live MLflow


def test_parallel_training_jobs_with_live_mlflow_lose_no_run_metric_or_artifact(shrunken_grid, tmp_path):
    folder = shrunken_grid
    assert not list((folder / "runs").rglob("mlflow_pending_*.json")), "a job fell back to a pending record"
    parent_info = json.loads((folder / "runs/mlflow_parent.json").read_text())
    client = mlflow_client(parent_info["tracking_uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    kinds = sorted(r.data.tags.get("kind") for r in runs)
    trainings, evaluations = TRAININGS_PER_SEED * len(SEEDS), EVALUATIONS_PER_SEED * len(SEEDS)
    assert kinds == ["evaluate"] * evaluations + ["pipeline"] + ["train"] * trainings
    parent = next(r for r in runs if r.data.tags["kind"] == "pipeline")
    assert parent.info.run_id == parent_info["parent_run_id"]
    assert all(r.info.status == "FINISHED" for r in runs)
    children = [r for r in runs if r.data.tags["kind"] != "pipeline"]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children)
    runs_of = {"base2novel": METHODS, "cross_dataset": METHODS, "few_shot": FEW_SHOT_METHODS}
    assert {(r.data.tags["protocol"], r.data.tags["method"], r.data.tags["seed"]) for r in children} == {
        (protocol, m, str(s)) for protocol, methods in runs_of.items() for m in methods for s in SEEDS
    } | {("domain_generalization", m, str(s)) for m in METHODS for s in SEEDS}

    for child in children:
        tags = child.data.tags
        run_dir = grid_run(tags["method"], tags["seed"], tags["protocol"])
        dest = tmp_path / child.info.run_id
        if child.data.tags["kind"] == "train":
            history = summary(folder, run_dir)["history"]
            for key in HISTORY_KEYS:  # every epoch's metrics, exactly as train.json has them
                logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, key))
                assert logged == [(r["epoch"], r[key]) for r in history], (child.info.run_name, key)
            names = ["prompts.safetensors", "train.json", "train.log"]
        else:
            metrics = json.loads((folder / run_dir / "metrics.json").read_text())
            logged = {f"accuracy/{k}": v for k, v in metrics["accuracy"].items()}
            if tags["protocol"] == "base2novel":
                assert set(metrics["accuracy"]) == {"base", "novel"}
                logged["hm"] = metrics["hm"]
            for key, values in metrics["class_metrics"].items():  # balanced accuracy and macro-F1 of each subset
                logged |= {f"{name}/{key}": values[name] for name in ("balanced_accuracy", "macro_f1")}
            assert child.data.metrics == logged
            names = ["metrics.json", "predictions.npz"]
        assert sorted(a.path for a in client.list_artifacts(child.info.run_id)) == names
        for name in names:
            assert artifact_bytes(client, child.info.run_id, name, dest) == (folder / run_dir / name).read_bytes()

    # the training jobs really ran at the same time: intervals of at least two train runs overlap
    trains = sorted((r.info.start_time, r.info.end_time) for r in runs if r.data.tags["kind"] == "train")
    most = max(sum(s <= start < e for s, e in trains) for start, _ in trains)
    assert most >= 2, f"the training jobs did not overlap: {trains}"


# ---------------------------------------------------------------- MLflow unreachable, through the CLI


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_training_with_mlflow_unreachable_completes_warns_once_and_sync_relogs(shrunken_grid, tmp_path):
    """`python -m prompt_ot train` with MLFLOW_TRACKING_URI at a closed port (not deferred): the results are
    on disk and equal those of a tracked run, one warning for the whole job, then `mlflow sync` logs the run."""
    grid = shrunken_grid
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(grid / "params.yaml", project / "params.yaml")
    shutil.copytree(grid / "runs/backbone", project / "runs/backbone")  # the pretrained weights params.yaml names
    out = project / "runs" / "offline"
    manifest = grid / f"runs/manifests/digits/base_{SHOTS}shot_seed1.json"
    cache = grid / f"cache/train/digits/base_{SHOTS}shot_seed1"
    server = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    command = ["train", "--params", "params.yaml", "--protocol", "base2novel", "--method", "prompt_ot", "--seed", "1"]
    command += ["--manifest", str(manifest), "--train-cache", str(cache), "--out", str(out)]
    result = run([*PROMPT_OT, *command], project, MLFLOW_TRACKING_URI=server)
    assert time.monotonic() - started < 120  # no long retries against the dead server
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr  # once per process, not once per epoch
    assert "mlflow_pending_train.json" in warnings[0] and "python -m prompt_ot mlflow sync" in warnings[0]
    trained = json.loads((out / "train.json").read_text())
    assert without_seconds(trained["history"]) == without_seconds(summary(grid, KILLED)["history"])
    from prompt_ot.checkpoint import load_prompts

    (mine, _), (tracked, _) = (load_prompts(f / "prompts.safetensors") for f in (out, grid / KILLED))
    assert mine.keys() == tracked.keys() and all(mine[k].equal(tracked[k]) for k in mine)
    pending = json.loads((out / "mlflow_pending_train.json").read_text())
    assert pending["status"] == "FINISHED" and pending["partial_run_id"] is None
    assert len(pending["metrics"]) == sum(len(record) - 1 for record in trained["history"])  # all but "epoch"

    synced = run([sys.executable, "-m", "prompt_ot", "mlflow", "sync", "runs", "--project-root", "."], project)
    assert "synced 1 of 1 pending runs" in synced.stdout
    assert not (out / "mlflow_pending_train.json").exists() and (out / "mlflow_synced_train.json").exists()
    client = mlflow_client(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0]
    assert logged.data.tags["method"] == "prompt_ot" and logged.data.tags["prompt_ot.logged_late"] == "true"
    for key in HISTORY_KEYS:
        history = sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, key))
        assert history == [(r["epoch"], r[key]) for r in trained["history"]]
    assert sorted(a.path for a in client.list_artifacts(logged.info.run_id)) == [
        "prompts.safetensors",
        "train.json",
        "train.log",
    ]
    for name in ("prompts.safetensors", "train.json", "train.log"):
        assert artifact_bytes(client, logged.info.run_id, name, tmp_path / "dl") == (out / name).read_bytes()


# ---------------------------------------------------------------- killed builds leave nothing complete-looking

_BLOCKED_BUILD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    kind, out, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def block(*args, **kwargs):  # stands in for a build that is SIGKILLed half-way
        ready.touch()
        threading.Event().wait()

    if kind == "store":
        from prompt_ot.data import store
        from tests.support.data import make_images
        store._decode = block
        store.build_store(make_images(out.parent / "images"), out.parent / "images", out, "test", 32, workers=1)
    else:
        from prompt_ot.cache import build_test_cache
        from prompt_ot.models.prompted import PromptedCLIP
        PromptedCLIP.frozen_image_features = block
        build_test_cache("digits", sys.argv[4], "demo-vit", sys.argv[5], out, device="cpu", progress=False)
""")


def _kill_blocked_build(kind: str, out: Path, *args: str) -> int:
    """Run a build that blocks half-way, SIGKILL it there; return its pid."""
    ready = out.parent / f"{out.name}.ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_BUILD, kind, str(out), str(ready), *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    ready.unlink()
    return proc.pid


def _hidden(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _live_building_folder(out: Path) -> subprocess.Popen:
    """Another process building the same target right now (it made its folder and goes on running)."""
    code = (
        "import sys; from prompt_ot.utils.io import hidden_folder; print(hidden_folder(sys.argv[1]), flush=True);"
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert Path(proc.stdout.readline().strip()).is_dir()
    return proc


def test_a_killed_store_build_leaves_only_a_hidden_folder_that_the_next_build_removes(tmp_path):
    from prompt_ot.data.store import ImageStore, build_store
    from prompt_ot.utils.io import stale_folders
    from tests.support.data import make_images

    out = tmp_path / "store"
    pid = _kill_blocked_build("store", out)
    assert not out.exists()  # nothing under the final name
    left = _hidden(tmp_path, "store")
    assert len(left) == 1 and left[0].startswith(".store.building-") and f"-{pid}-" in left[0]
    live = _live_building_folder(out)  # must survive: its owner still runs
    other_target = tmp_path / left[0].replace(".store.", ".other.", 1)  # stale, but of another target
    other_target.mkdir()
    other_host = tmp_path / left[0].replace(f"-{pid}-", f"_elsewhere-{pid}-")  # another host's: never judged
    other_host.mkdir()
    assert [p.name for p in stale_folders(out)] == left

    build_store(make_images(tmp_path / "images"), tmp_path / "images", out, "test", 32)
    assert len(ImageStore(out)) == 7
    remaining = _hidden(tmp_path, "store")
    assert left[0] not in remaining and other_host.name in remaining and other_target.exists()
    assert len(remaining) == 2  # the live builder's folder and the other host's
    live.stdin.close()
    live.wait()
    build_store(make_images(tmp_path / "images"), tmp_path / "images", out, "test", 32)  # reused, and cleans up
    assert _hidden(tmp_path, "store") == [other_host.name]


def test_a_killed_cache_build_leaves_only_a_hidden_folder_that_the_next_cli_build_removes(shrunken_grid, tmp_path):
    data = shrunken_grid / "data"
    out = tmp_path / "digits"
    pid = _kill_blocked_build("cache", out, str(data), str(shrunken_grid / "runs/backbone/demo-vit.safetensors"))
    assert not out.exists()
    left = _hidden(tmp_path, "digits")
    assert len(left) == 1 and f"-{pid}-" in left[0]
    assert (tmp_path / left[0] / "store" / "index.json").exists()  # it was half-way: the store done, no features
    weights = shrunken_grid / "runs/backbone/demo-vit.safetensors"  # the grid's pretrained backbone
    command = ["cache", "test", "digits", "--root", str(data), "--backbone", "demo-vit", "--pretrained", str(weights)]
    run([*PROMPT_OT, *command, "--out", str(out)], tmp_path)
    assert _hidden(tmp_path, "digits") == []
    assert (out / "index.json").exists()
    reference = shrunken_grid / "cache/test/digits"
    for name in ("image_features.npy", "labels.npy"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_atomic_outputs_get_normal_permissions_and_leave_no_temporary_file(tmp_path):
    """Outputs written under a temporary name get the permissions of any new file (mkstemp's are 0600)."""
    from prompt_ot.utils.io import atomic_write_text, hidden_folder

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
        folder = hidden_folder(tmp_path / "cache")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name, "metrics.json"]


def test_a_writer_killed_mid_write_leaves_a_hidden_temporary_file_that_the_next_write_removes(tmp_path):
    from prompt_ot.utils.io import atomic_write_text

    code = (
        "import sys, os; from prompt_ot.utils.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); print(tmp, flush=True); sys.stdin.read()"
    )
    target = tmp_path / "metrics.json"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(target)],
            env=env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    killed, live = [Path(w.stdout.readline().strip()) for w in writers]
    writers[0].kill()
    writers[0].wait()
    assert killed.exists() and not target.exists()  # the half-written file never got the final name
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}" and not killed.exists() and live.exists()  # a live writer's file is kept
    writers[1].stdin.close()
    writers[1].wait()
    assert target.read_text() == "half" and not live.exists()
