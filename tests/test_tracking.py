"""MLflow tracking: what a run logs reads back exactly; parents; concurrent writers; an unreachable or broken store."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from prompt_ot import tracking
from prompt_ot.cli import main
from prompt_ot.tracking import Tracker, flatten_params, git_state, pending_file, synced_file, tracking_uri

REPO = Path(__file__).resolve().parents[1]
_ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    tracking.PARENT_ENV,
    tracking.ENABLE_ENV,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One migrated SQLite store with a parent run, made through the CLI (`mlflow init`), shared by the module."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        for name in _ENV_VARS:
            mp.delenv(name, raising=False)
        assert main(["mlflow", "init", "--project-root", str(root), "--out", str(root / "runs" / "parent.json")]) == 0
    info = json.loads((root / "runs" / "parent.json").read_text())
    return root, info


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _warnings(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


# ---------------------------------------------------------------- locations, params, git


def test_default_uri_is_an_absolute_sqlite_file_under_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri("proj")  # a relative root still gives an absolute store
    assert uri == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")
    assert tracking.artifact_location(uri) == (tmp_path / "proj" / "mlartifacts").as_uri()


def test_mlflow_tracking_uri_overrides_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"
    assert Tracker(tmp_path).uri == "http://tracking.example:5000"
    assert tracking.artifact_location("http://tracking.example:5000") is None  # the server decides


def test_flatten_params_dots_nested_keys_and_stringifies_values():
    @dataclasses.dataclass
    class Optim:
        lr: float = 0.005
        momentum: float = 0.9

    params = {
        "method": "prompt_ot",
        "ot": {"lam": 10, "eta": 0.5, "solver": {"name": "emd"}},
        "seeds": [1, 2],
        "optim": Optim(),
        "warmup": None,
        "drop_last": True,
        "empty": {},
        "long": "x" * 7000,
    }
    flat = flatten_params(params)
    assert {k: v for k, v in flat.items() if k != "long"} == {
        "method": "prompt_ot",
        "ot.lam": "10",
        "ot.eta": "0.5",
        "ot.solver.name": "emd",
        "seeds": "[1, 2]",
        "optim.lr": "0.005",
        "optim.momentum": "0.9",
        "warmup": "None",
        "drop_last": "True",
        "empty": "{}",
    }
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")


def test_git_state_reads_commit_and_dirty_flag(tmp_path):
    assert git_state(tmp_path) == {"git_commit": "unknown", "git_dirty": "unknown"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "false"}
    (tmp_path / "a.txt").write_text("changed")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": "true"}


# ---------------------------------------------------------------- what a run logs


def test_a_run_logs_params_metrics_artifacts_and_tags_that_read_back_exactly(store, tmp_path):
    root, info = store
    run_dir = tmp_path / "train" / "seed1"
    (run_dir / "prompts").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"accuracy": 0.75}')
    (run_dir / "prompts" / "text.bin").write_bytes(b"\x00\x01")
    (run_dir / pending_file("train")).write_text("{}")  # left by an earlier, offline attempt: the rerun replaces it
    tracker = Tracker(root, parent_file=root / "runs" / "parent.json")
    params = {"method": "prompt_ot", "ot": {"lam": 10, "eta": 0.5}, "shots": 16}
    tags = {"method": "prompt_ot", "dataset": "caltech101", "seed": 1, "protocol": "base2novel"}
    losses = [1.0 / (epoch + 1) for epoch in range(5)]
    with tracker.run(
        name="train/prompt_ot/caltech101/seed1", kind="train", params=params, tags=tags, run_dir=run_dir
    ) as run:
        for epoch, loss in enumerate(losses):
            run.log_metrics({"loss": loss, "train_accuracy": 0.1 * epoch}, step=epoch)
        run.log_artifact(run_dir / "metrics.json")
        run.log_artifact(run_dir / "prompts")

    client = _client(info["tracking_uri"])
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "train/prompt_ot/caltech101/seed1"
    assert logged.data.params == {"method": "prompt_ot", "ot.lam": "10", "ot.eta": "0.5", "shots": "16"}
    assert {k: logged.data.tags[k] for k in ("method", "dataset", "seed", "protocol", "kind")} == {
        "method": "prompt_ot",
        "dataset": "caltech101",
        "seed": "1",
        "protocol": "base2novel",
        "kind": "train",
    }
    assert logged.data.tags["git_commit"] == "unknown" and logged.data.tags["git_dirty"] == "unknown"
    assert logged.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
    assert _history(client, run.run_id, "loss") == list(enumerate(losses))
    assert _history(client, run.run_id, "train_accuracy") == [(e, 0.1 * e) for e in range(5)]
    assert logged.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    assert sorted(a.path for a in client.list_artifacts(run.run_id)) == ["metrics.json", "prompts"]
    local = Path(client.download_artifacts(run.run_id, "prompts/text.bin", str(tmp_path / "dl")))
    assert local.read_bytes() == b"\x00\x01"
    children = client.search_runs(
        [info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}' and tags.seed = '1'"
    )
    assert run.run_id in [r.info.run_id for r in children]
    assert not (run_dir / pending_file("train")).exists()


def test_parent_comes_from_the_env_var_before_the_file(store, tmp_path, monkeypatch):
    root, info = store
    client = _client(info["tracking_uri"])
    other = client.create_run(info["experiment_id"], run_name="other-parent").info.run_id
    monkeypatch.setenv(tracking.PARENT_ENV, other)
    with Tracker(root, parent_file=root / "runs" / "parent.json").run("a", "train", run_dir=tmp_path / "a") as run:
        pass
    assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == other
    monkeypatch.setenv(tracking.PARENT_ENV, str(root / "runs" / "parent.json"))  # a parent file works too
    with Tracker(root).run("b", "train", run_dir=tmp_path / "b") as run:
        pass
    assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == info["parent_run_id"]


def test_without_a_parent_runs_are_top_level_and_a_stale_parent_is_dropped(store, tmp_path, capfd):
    root, info = store
    client = _client(info["tracking_uri"])
    with Tracker(root).run("top", "evaluate", run_dir=tmp_path / "top") as run:
        pass
    assert "mlflow.parentRunId" not in client.get_run(run.run_id).data.tags
    stale = tmp_path / "stale.json"  # e.g. restored by DVC after mlflow.db was deleted
    stale.write_text(json.dumps({"tracking_uri": info["tracking_uri"], "parent_run_id": "0" * 32}))
    with Tracker(root, parent_file=stale).run("orphan", "evaluate", run_dir=tmp_path / "orphan") as run:
        pass
    assert "mlflow.parentRunId" not in client.get_run(run.run_id).data.tags
    assert client.get_run(run.run_id).info.status == "FINISHED"
    warned = _warnings(capfd.readouterr().err)
    assert len(warned) == 1 and "0" * 32 in warned[0]


def test_a_failing_body_ends_the_run_failed_and_keeps_what_was_logged(store, tmp_path):
    root, info = store
    with pytest.raises(ValueError, match="diverged"):
        with Tracker(root).run("crash", "train", run_dir=tmp_path) as run:
            run.log_metrics({"loss": 2.5}, step=0)
            raise ValueError("diverged")
    client = _client(info["tracking_uri"])
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert _history(client, run.run_id, "loss") == [(0, 2.5)]


_RECORDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prompt_ot.tracking import Tracker
    root, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    with Tracker(root, parent_file=root / "runs" / "parent.json").run("train/killed", "train", run_dir=run_dir) as run:
        for epoch in range(2):
            run.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
        print(run.run_id, flush=True)
        time.sleep(120)
""")


def _start_recorder(root, run_dir):
    """A process recording a train run into ``run_dir``, stopped mid-run; returns (process, run id)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, str(root), str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    run_id = process.stdout.readline().strip()
    assert run_id, "the recording process did not start its run"
    return process, run_id


def test_a_rerun_ends_the_run_its_killed_predecessor_left_running(store, tmp_path, capfd):
    """SIGKILL leaves the MLflow run RUNNING (no process is left to end it); the next run into the same folder
    ends it KILLED, at its last sign of life, with the reason as a tag, and records its own run."""
    root, info = store
    client = _client(info["tracking_uri"])
    run_dir = tmp_path / "seed1"
    process, old = _start_recorder(root, run_dir)
    live = run_dir / tracking.live_file("train")
    assert json.loads(live.read_text())["run_id"] == old
    last_sign = live.stat().st_mtime
    process.kill()
    process.wait()
    assert client.get_run(old).info.status == "RUNNING"
    capfd.readouterr()
    with Tracker(root, parent_file=root / "runs" / "parent.json").run("train/rerun", "train", run_dir=run_dir) as run:
        assert client.get_run(old).info.status == "KILLED"
    ended = client.get_run(old)
    assert ended.info.end_time == int(last_sign * 1000)
    assert ended.info.end_time >= max(m.timestamp for m in client.get_metric_history(old, "loss"))
    assert "ended without closing it" in ended.data.tags[tracking.ABANDONED_TAG]
    assert _history(client, old, "loss") == [(0, 1.0), (1, 0.5)]  # what it logged is kept
    assert client.get_run(run.run_id).info.status == "FINISHED" and run.run_id != old
    assert not live.exists()  # a finished run leaves no live record
    warned = _warnings(capfd.readouterr().err)
    assert len(warned) == 1 and old in warned[0] and "KILLED" in warned[0]


def test_a_run_still_recorded_by_a_live_process_is_left_alone(store, tmp_path, capfd):
    root, info = store
    client = _client(info["tracking_uri"])
    run_dir = tmp_path / "seed2"
    process, other = _start_recorder(root, run_dir)
    try:
        capfd.readouterr()
        with Tracker(root).run("train/second", "train", run_dir=run_dir):
            pass
        assert client.get_run(other).info.status == "RUNNING"
        warned = _warnings(capfd.readouterr().err)
        assert len(warned) == 1 and "two jobs are writing" in warned[0]
    finally:
        process.kill()
        process.wait()
    # a record naming another store, or unreadable, is dropped without touching any run
    live = run_dir / tracking.live_file("train")
    assert json.loads(live.read_text())["run_id"] == other
    live.write_text(json.dumps({"run_id": other, "tracking_uri": "sqlite:////elsewhere.db", "host": "x", "pid": 1}))
    with Tracker(root).run("train/third", "train", run_dir=run_dir):
        pass
    assert client.get_run(other).info.status == "RUNNING" and not live.exists()


def test_a_new_pipeline_ends_the_parent_run_of_a_killed_one(tmp_path, capfd):
    out = tmp_path / "runs" / "parent.json"
    first = tracking.prepare(tmp_path, out=out)
    client = _client(first["tracking_uri"])
    assert client.get_run(first["parent_run_id"]).info.status == "RUNNING"  # killed: `mlflow finish` never ran
    capfd.readouterr()
    second = tracking.prepare(tmp_path, out=out)
    ended = client.get_run(first["parent_run_id"])
    assert ended.info.status == "KILLED" and tracking.ABANDONED_TAG in ended.data.tags
    assert client.get_run(second["parent_run_id"]).info.status == "RUNNING"
    assert len(_warnings(capfd.readouterr().err)) == 1
    tracking.finish(out)  # a pipeline that ended normally: the next one has nothing to end
    assert client.get_run(second["parent_run_id"]).info.status == "FINISHED"
    third = tracking.prepare(tmp_path, out=out)
    assert client.get_run(second["parent_run_id"]).info.status == "FINISHED"
    assert _warnings(capfd.readouterr().err) == [] and third["parent_run_id"] != second["parent_run_id"]


def test_a_missing_artifact_is_a_caller_error(store, tmp_path):
    root, _ = store
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        with Tracker(root).run("missing", "train", run_dir=tmp_path) as run:
            run.log_artifact(tmp_path / "nothing.bin")


def test_tracking_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.ENABLE_ENV, "off")
    with Tracker(tmp_path).run("off", "train", params={"a": 1}, run_dir=tmp_path / "run") as run:
        run.log_metrics({"loss": 1.0}, step=0)
    assert run.run_id is None
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run" / pending_file("train")).exists()
    # the pipeline's `mlflow init` / `finish` honour it too: no store, no parent run, nothing to end
    assert main(["mlflow", "init", "--project-root", str(tmp_path), "--out", str(tmp_path / "parent.json")]) == 0
    assert json.loads((tmp_path / "parent.json").read_text())["parent_run_id"] is None
    assert main(["mlflow", "finish", str(tmp_path / "parent.json")]) == 0
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


# ---------------------------------------------------------------- locked SQLite


class _Locked(Exception):
    pass


def test_retry_waits_out_a_locked_database_and_gives_up_on_anything_else():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("write failed") from _Locked("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry._retry(flaky) == "ok" and len(calls) == 3

    other = []

    def broken():
        other.append(1)
        raise RuntimeError("no such table: runs")

    with pytest.raises(RuntimeError, match="no such table"):
        tracking.retry._retry(broken)
    assert len(other) == 1

    def always_locked():
        raise _Locked("database is locked")

    start = time.monotonic()
    with pytest.raises(_Locked):
        tracking.retry._retry(always_locked, deadline_s=0.5)
    assert time.monotonic() - start < 2.0


def test_a_real_sqlite_lock_is_recognised(tmp_path):
    db = tmp_path / "x.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    waiter = sqlite3.connect(db, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as caught:
        waiter.execute("insert into t values (1)")
    holder.execute("rollback")
    assert tracking.retry._is_locked(caught.value)


@pytest.mark.slow
def test_a_store_locked_past_mlflows_busy_timeout_is_waited_out(store, tmp_path, monkeypatch):
    """MLflow waits 20 s on a SQLite lock and then raises; the retry must carry the run through a 24 s lock."""
    root, info = store
    locked_seen = []
    is_locked = tracking.retry._is_locked
    monkeypatch.setattr(tracking.retry, "_is_locked", lambda exc: locked_seen.append(is_locked(exc)) or locked_seen[-1])
    with Tracker(root).run("locked", "train", run_dir=tmp_path) as run:
        holder = sqlite3.connect(root / "mlflow.db", isolation_level=None, check_same_thread=False)
        holder.execute("begin exclusive")
        release = threading.Timer(24, holder.execute, ["rollback"])
        release.start()
        run.log_metrics({"loss": 0.25}, step=7)
        release.join()
    assert True in locked_seen and run.online
    client = _client(info["tracking_uri"])
    assert _history(client, run.run_id, "loss") == [(7, 0.25)]
    assert client.get_run(run.run_id).info.status == "FINISHED"


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow  # imported before the start signal so that all workers write at once
    from prompt_ot.tracking import Tracker

    root, index, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    run_dir = root / "runs" / f"w{index}"
    run_dir.mkdir(parents=True)
    (run_dir / "weights.bin").write_bytes(bytes([index]) * 1000)
    (root / f"ready{index}").touch()
    while not go.exists():
        time.sleep(0.01)
    tracker = Tracker(root, parent_file=root / "runs" / "parent.json")
    with tracker.run(f"train/w{index}", "train", params={"worker": index, "ot": {"lam": 10}},
                     tags={"seed": index}, run_dir=run_dir) as run:
        for step in range(20):
            run.log_metrics({"loss": index + step / 100, "train_accuracy": step / 20}, step=step)
        run.log_artifact(run_dir / "weights.bin")
    print(run.run_id)
""")


def test_concurrent_processes_lose_no_run_metric_or_artifact(tmp_path, workers=8):
    """Eight processes log runs to the embedded SQLite store at once (~15 s on two idle cores)."""
    info = tracking.prepare(tmp_path, out=tmp_path / "runs" / "parent.json")
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(i), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(workers)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [err for _, err in outputs]
    assert not any(_warnings(err) for _, err in outputs)
    assert not list((tmp_path / "runs").rglob(pending_file("*")))

    client = _client(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert sorted(r.info.run_name for r in runs) == sorted(f"train/w{i}" for i in range(workers))
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in outputs)
    for run in runs:
        index = int(run.data.params["worker"])
        assert run.info.status == "FINISHED" and run.data.params["ot.lam"] == "10"
        assert _history(client, run.info.run_id, "loss") == [(s, index + s / 100) for s in range(20)]
        assert _history(client, run.info.run_id, "train_accuracy") == [(s, s / 20) for s in range(20)]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["weights.bin"]
        local = client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / f"dl{index}"))
        assert Path(local).read_bytes() == bytes([index]) * 1000


# ---------------------------------------------------------------- MLflow unavailable, then sync


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_two_runs(tracker, runs):
    for name in ("a", "b"):
        run_dir = runs / name
        run_dir.mkdir(parents=True)
        (run_dir / "prompts.bin").write_bytes(name.encode() * 10)
        with tracker.run(
            f"train/{name}",
            "train",
            params={"ot": {"lam": 10}, "name": name},
            tags={"dataset": "dtd", "seed": 1},
            run_dir=run_dir,
        ) as run:
            for step in range(3):
                run.log_metrics({"loss": step + 0.5, "train_accuracy": step / 4}, step=step)
            run.log_artifact(run_dir / "prompts.bin")
        assert run.run_id is None


def test_an_unreachable_server_warns_once_records_pending_files_and_sync_relogs_them(tmp_path, monkeypatch, capfd):
    project, runs = tmp_path / "project", tmp_path / "runs"
    server = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    parent_file = tmp_path / "parent.json"  # `mlflow init` worked before the server went away
    parent_file.write_text(json.dumps({"tracking_uri": server, "parent_run_id": "f" * 32}))
    clients, real_client = [], tracking.store._client
    monkeypatch.setattr(tracking.store, "_client", lambda uri: clients.append(uri) or real_client(uri))
    start = time.monotonic()
    _train_two_runs(Tracker(project, parent_file=parent_file), runs)
    assert time.monotonic() - start < 30
    assert len(clients) == 1  # the second run does not try the dead server again
    monkeypatch.setattr(tracking.store, "_client", real_client)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the fail-fast settings are put back
    warned = _warnings(capfd.readouterr().err)
    assert len(warned) == 1
    assert (
        str(runs / "a" / pending_file("train")) in warned[0] and f"python -m prompt_ot mlflow sync {runs}" in warned[0]
    )
    pending = json.loads((runs / "b" / pending_file("train")).read_text())
    assert pending["params"] == {"ot.lam": "10", "name": "b"} and pending["status"] == "FINISHED"
    assert pending["parent_run_id"] == "f" * 32 and pending["partial_run_id"] is None
    assert pending["tags"]["dataset"] == "dtd" and pending["tags"]["kind"] == "train"
    assert [(m["key"], m["step"], m["value"]) for m in pending["metrics"]] == [
        (k, s, v) for s in range(3) for k, v in (("loss", s + 0.5), ("train_accuracy", s / 4))
    ]
    assert pending["artifacts"] == [{"path": "prompts.bin", "artifact_path": None}]

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store works again (here: the embedded default)
    assert main(["mlflow", "sync", str(runs), "--project-root", str(project)]) == 0
    assert "synced 2 of 2 pending runs" in capfd.readouterr().out
    client = _client(tracking_uri(project))
    experiment = client.get_experiment_by_name("prompt-ot")
    logged = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in logged) == ["train/a", "train/b"]
    for run in logged:
        name = run.info.run_name[-1]
        assert run.data.params == {"ot.lam": "10", "name": name} and run.info.status == "FINISHED"
        assert run.data.tags["dataset"] == "dtd" and run.data.tags["prompt_ot.logged_late"] == "true"
        assert "mlflow.parentRunId" not in run.data.tags  # that parent is not in this store
        assert _history(client, run.info.run_id, "loss") == [(s, s + 0.5) for s in range(3)]
        assert _history(client, run.info.run_id, "train_accuracy") == [(s, s / 4) for s in range(3)]
        local = client.download_artifacts(run.info.run_id, "prompts.bin", str(tmp_path / f"dl_{name}"))
        assert Path(local).read_bytes() == name.encode() * 10
        assert not (runs / name / pending_file("train")).exists()
        assert json.loads((runs / name / synced_file("train")).read_text())["synced_run_id"] == run.info.run_id
    assert main(["mlflow", "sync", str(runs), "--project-root", str(project)]) == 0  # nothing left to log
    assert "no pending MLflow runs" in capfd.readouterr().out
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_a_corrupt_database_does_not_stop_init_or_training_and_sync_keeps_the_pending_file(tmp_path, capfd):
    project, runs = tmp_path / "project", tmp_path / "runs"
    project.mkdir()
    (project / "mlflow.db").write_bytes(b"this is not a database" * 100)
    parent_file = runs / "parent.json"
    assert main(["mlflow", "init", "--project-root", str(project), "--out", str(parent_file)]) == 0
    assert json.loads(parent_file.read_text())["parent_run_id"] is None
    _train_two_runs(Tracker(project, parent_file=parent_file), runs)
    assert len(_warnings(capfd.readouterr().err)) == 2  # one from init, one from the tracker
    assert sorted(p.parent.name for p in runs.rglob(pending_file("*"))) == ["a", "b"]
    assert main(["mlflow", "sync", str(runs), "--project-root", str(project)]) == 1
    assert "synced 0 of 2 pending runs" in capfd.readouterr().out
    assert sorted(p.parent.name for p in runs.rglob(pending_file("*"))) == ["a", "b"]


def test_failures_mid_run_warn_once_and_each_run_is_synced_as_one_complete_run(store, tmp_path, monkeypatch, capfd):
    from mlflow import MlflowClient

    root, info = store
    real_log_batch = MlflowClient.log_batch
    tracker = Tracker(root, parent_file=root / "runs" / "parent.json")
    with (
        tracker.run("eval/base", "evaluate", params={"lam": 10}, run_dir=tmp_path / "base") as base,
        tracker.run("eval/novel", "evaluate", params={"lam": 10}, run_dir=tmp_path / "novel") as novel,
    ):
        for run in (base, novel):
            run.log_metrics({"loss": 3.0}, step=0)
        monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("server gone")))
        for step, loss in ((1, 2.0), (2, 1.0)):
            for run in (base, novel):
                run.log_metrics({"loss": loss}, step=step)
    monkeypatch.setattr(MlflowClient, "log_batch", real_log_batch)
    warned = _warnings(capfd.readouterr().err)
    assert len(warned) == 1 and "server gone" in warned[0]  # two runs failed, one warning
    partials = {run.run_id for run in (base, novel)}
    for name in ("base", "novel"):
        pending = json.loads((tmp_path / name / pending_file("evaluate")).read_text())
        assert pending["partial_run_id"] in partials and pending["parent_run_id"] == info["parent_run_id"]

    outcomes = tracking.sync_pending(tmp_path, root)
    assert [o.error for o in outcomes] == [None, None]
    client = _client(info["tracking_uri"])
    for partial in partials:  # no half-logged duplicate stays
        assert client.get_run(partial).info.lifecycle_stage == "deleted"
    for outcome in outcomes:
        synced = client.get_run(outcome.run_id)
        assert synced.data.tags["mlflow.parentRunId"] == info["parent_run_id"] and synced.data.params == {"lam": "10"}
        assert _history(client, synced.info.run_id, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_sync_of_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["mlflow", "sync", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_deferred_runs_skip_mlflow_then_one_sync_logs_train_and_evaluate_of_one_folder(tmp_path):
    """With defer, jobs never import MLflow; a train and an evaluate run of one folder keep separate records."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from prompt_ot.tracking import Tracker
        root, run_dir = Path({str(tmp_path)!r}), Path({str(tmp_path / "runs" / "r1")!r})
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{{}}")
        tracker = Tracker(root, defer=True)
        with tracker.run("train/x", "train", params={{"lam": 10}}, run_dir=run_dir) as run:
            for step in range(3):
                run.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
        with tracker.run("evaluate/x", "evaluate", run_dir=run_dir) as run:
            run.log_metrics({{"accuracy/base": 50.0}})
            run.log_artifact(run_dir / "metrics.json")
        print("mlflow imported:", "mlflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "mlflow imported: False" in result.stdout
    assert result.stderr.count("warning") == 0
    runs_dir = tmp_path / "runs" / "r1"
    assert (runs_dir / pending_file("train")).exists() and (runs_dir / pending_file("evaluate")).exists()
    from prompt_ot.tracking import sync_pending

    outcomes = sync_pending(tmp_path / "runs", tmp_path)
    assert len(outcomes) == 2 and not any(o.error for o in outcomes)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prompt-ot").experiment_id])
    by_kind = {r.data.tags["kind"]: r for r in runs}
    assert set(by_kind) == {"train", "evaluate"}
    assert [m.value for m in client.get_metric_history(by_kind["train"].info.run_id, "loss")] == [1.0, 0.5, 1 / 3]
    assert by_kind["evaluate"].data.metrics == {"accuracy/base": 50.0}
