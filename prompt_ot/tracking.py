"""MLflow tracking for the train and evaluate stages; the library below it never imports mlflow.

    tracker = Tracker(project_root, parent_file=Path("runs/mlflow_parent.json"))
    with tracker.run(name="train/prompt_ot/caltech101/seed1", kind="train", params=config,
                     tags={"method": "prompt_ot", "dataset": "caltech101", "seed": 1}, run_dir=out) as run:
        run.log_metrics({"loss": 0.3}, step=epoch)
        run.log_artifact(out / "prompts.safetensors")

Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project_root>/mlflow.db`` (absolute: DVC runs stages in
temporary folders) with artifacts in ``<project_root>/mlartifacts``. ``prepare`` creates the store, the experiment and
a parent run once, before runs fan out. SQLite "database is locked" errors are retried with a bounded backoff. When
MLflow fails anyway the run still completes: one warning, and everything it should have logged goes to
``<run_dir>/mlflow_pending.json``, which ``sync_pending`` (``python -m prompt_ot mlflow sync``) logs later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

from prompt_ot.utils.io import atomic_write_text, owner, owner_running

DEFAULT_EXPERIMENT = "prompt-ot"
PARENT_ENV = "PROMPT_OT_MLFLOW_PARENT"  # a parent run id, or the path of a file written by `prepare`
ENABLE_ENV = "PROMPT_OT_MLFLOW"  # "0", "off" or "false" turns tracking off entirely
PENDING_FILE = "mlflow_pending_{kind}.json"  # one per run kind, so a train and an evaluate run can share a folder
SYNCED_FILE = "mlflow_synced_{kind}.json"
LIVE_FILE = "mlflow_live_{kind}.json"  # the MLflow run a process is recording now, with its owner
ABANDONED_TAG = "prompt_ot.ended_as_killed"  # why a RUNNING run whose process is gone was ended KILLED


def live_file(kind: str) -> str:
    return LIVE_FILE.format(kind=kind)


def pending_file(kind: str) -> str:
    return PENDING_FILE.format(kind=kind)


def synced_file(kind: str) -> str:
    return SYNCED_FILE.format(kind=kind)
PENDING_FORMAT = "prompt-ot/mlflow-pending/1"
LOCK_RETRY_SECONDS = 120.0  # total time one call may spend waiting on a locked SQLite database

# MLflow's own limits (mlflow.utils.validation); our batches stay inside them so each call is one transaction.
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000
# The first contact with a server must fail fast; later calls get a little more patience unless the user set them.
_PROBE_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_RUN_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# ---------------------------------------------------------------- locations, params, git


def tracking_enabled() -> bool:
    """False when ``PROMPT_OT_MLFLOW`` is "0", "off", "false" or "no": then nothing opens or creates a store."""
    return os.environ.get(ENABLE_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def tracking_uri(project_root: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the absolute SQLite store ``<project_root>/mlflow.db``."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return "sqlite:///" + (Path(project_root).resolve() / "mlflow.db").as_posix()


def artifact_location(uri: str) -> str | None:
    """``<folder of the db>/mlartifacts`` for an absolute SQLite store; None lets MLflow (or the server) decide."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///") :])
    return (db_path.parent / "mlartifacts").as_uri() if db_path.is_absolute() else None


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings (and dataclasses) become dotted keys; values become the strings MLflow stores."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = _param_value(value)
    return flat


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


def git_state(project_root: str | Path) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` ("true"/"false") of the checkout; "unknown" outside one."""
    unknown = {"git_commit": "unknown", "git_dirty": "unknown"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return unknown
    if head.returncode or status.returncode:
        return unknown
    return {"git_commit": head.stdout.strip(), "git_dirty": "true" if status.stdout.strip() else "false"}


# ---------------------------------------------------------------- talking to MLflow


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _is_locked(exc: BaseException | None) -> bool:
    """A SQLite lock somewhere in the exception chain (MLflow wraps SQLAlchemy's OperationalError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if "database is locked" in text or "database table is locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _retry(call: Callable, *args, deadline_s: float | None = None, **kwargs):
    """Call, retrying on a locked SQLite database with jittered exponential backoff for at most ``deadline_s``."""
    deadline_s = LOCK_RETRY_SECONDS if deadline_s is None else deadline_s
    start, delay = time.monotonic(), 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() - start + delay > deadline_s:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def _http_limits(uri: str, probe: bool) -> Iterator[None]:
    """Bound MLflow's HTTP retries and timeout (read per request) while calling a server."""
    if not uri.startswith(("http://", "https://")):
        yield
        return
    saved = {key: os.environ.get(key) for key in _PROBE_HTTP_ENV}
    if probe:
        os.environ.update(_PROBE_HTTP_ENV)
    else:
        for key, value in _RUN_HTTP_ENV.items():
            os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def _ensure_experiment(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with our artifact location) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri))
        except Exception as exc:  # another process created it first
            if "ALREADY_EXISTS" not in _error_code(exc):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise RuntimeError(f"experiment {name!r} is deleted; restore it or track into another experiment")
    return experiment.experiment_id


def _run_exists(client, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        _retry(client.get_run, run_id)
    except Exception as exc:
        if "DOES_NOT_EXIST" in _error_code(exc):
            return False
        raise
    return True


def _log_batches(client, run_id: str, params: Mapping[str, str] = {}, tags: Mapping[str, str] = {}, metrics=()) -> None:
    """Log in batches that each fit one MLflow call (one transaction), so a retried call repeats nothing."""
    from mlflow.entities import Metric, Param, RunTag

    param_list = [Param(k, v) for k, v in params.items()]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    metric_list = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in metrics]
    for i in range(0, len(param_list), _MAX_PARAMS_TAGS_PER_BATCH):
        _retry(client.log_batch, run_id, params=param_list[i : i + _MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
    for i in range(0, len(tag_list), _MAX_PARAMS_TAGS_PER_BATCH):
        _retry(client.log_batch, run_id, tags=tag_list[i : i + _MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
    for i in range(0, len(metric_list), _MAX_METRICS_PER_BATCH):
        _retry(client.log_batch, run_id, metrics=metric_list[i : i + _MAX_METRICS_PER_BATCH], synchronous=True)


def _upload(client, run_id: str, path: Path, artifact_path: str | None) -> None:
    if path.is_dir():
        target = f"{artifact_path}/{path.name}" if artifact_path else path.name
        _retry(client.log_artifacts, run_id, str(path), target)
    else:
        _retry(client.log_artifact, run_id, str(path), artifact_path)


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def _redact(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- prepare: store, experiment, parent run


def prepare(
    project_root: str | Path,
    experiment: str = DEFAULT_EXPERIMENT,
    parent_name: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Create the store (schema migration), the experiment and a parent run; write their ids to ``out`` (JSON).

    Runs once before the fan-out, so parallel runs never race on creating either. When MLflow fails, the pipeline
    still goes on: one warning, and ``parent_run_id`` is null (runs then record themselves in pending files).
    """
    root = Path(project_root).resolve()
    uri = tracking_uri(root)
    name = parent_name or time.strftime("pipeline/%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info: dict[str, Any] = {"tracking_uri": uri, "experiment": experiment, "experiment_id": None,
                            "parent_run_id": None, "parent_run_name": name, "error": None}
    if not tracking_enabled():  # no store, no parent run, no warning: the runs will not be tracked either
        info["error"] = f"tracking is off ({ENABLE_ENV}={os.environ.get(ENABLE_ENV)})"
        if out is not None:
            atomic_write_text(out, json.dumps(info, indent=2) + "\n")
        return info
    try:
        with _http_limits(uri, probe=True):
            client = _client(uri)
            info["experiment_id"] = _retry(_ensure_experiment, client, experiment, uri)
            if out is not None:
                _end_previous_parent(client, Path(out), uri, name)
            tags = {"kind": "pipeline", **git_state(root)}
            parent = _retry(client.create_run, info["experiment_id"], tags=tags, run_name=name)
            info["parent_run_id"] = parent.info.run_id
    except Exception as exc:
        info["error"] = _reason(exc)
        _warn(f"MLflow tracking at {_redact(uri)} is unavailable ({info['error']}); runs will record their results "
              f"in {pending_file('<kind>')} in their folders; re-log them later with: python -m prompt_ot mlflow sync <runs dir>")
    if out is not None:
        atomic_write_text(out, json.dumps(info, indent=2) + "\n")
    return info


def _end_abandoned(client, run_id: str, end_ms: int, why: str) -> bool:
    """End ``run_id`` KILLED at ``end_ms`` with the reason as a tag, if it is still RUNNING; True if it was."""
    try:
        run = _retry(client.get_run, run_id)
    except Exception as exc:
        if "DOES_NOT_EXIST" in _error_code(exc):
            return False
        raise
    if run.info.status != "RUNNING":
        return False
    _retry(client.set_tag, run_id, ABANDONED_TAG, why)
    _retry(client.set_terminated, run_id, "KILLED", max(end_ms, run.info.start_time or 0))
    return True


def _end_previous_parent(client, out: Path, uri: str, name: str) -> None:
    """The parent run of the previous pipeline invocation stays RUNNING when that invocation was killed
    before its end handler ran; a new invocation (Snakemake locks the folder: never two at once) ends it."""
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return
    run_id = previous.get("parent_run_id")
    if not run_id or previous.get("tracking_uri") != uri:
        return
    ended_ms = int(out.stat().st_mtime * 1000)
    if _end_abandoned(client, run_id, ended_ms, f"its pipeline ended without closing it; found by {name}"):
        _warn(f"ended the previous pipeline's MLflow parent run {run_id} as KILLED: that invocation was "
              f"interrupted before it could close it")


def finish(parent_file: str | Path, status: str = "FINISHED") -> str | None:
    """End the parent run named in ``parent_file`` (written by :func:`prepare`); returns its id, or None."""
    path = Path(parent_file)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    run_id = info.get("parent_run_id")
    if not run_id:
        return None
    try:
        with _http_limits(info["tracking_uri"], probe=True):
            client = _client(info["tracking_uri"])
            _retry(client.set_terminated, run_id, status=status)
    except Exception as exc:
        _warn(f"could not end the MLflow parent run {run_id} ({_reason(exc)}); it stays RUNNING")
        return None
    return run_id


# ---------------------------------------------------------------- live runs


class Tracker:
    """Opens tracked runs in one experiment and finds their parent; after an MLflow failure, warns once and
    sends later runs straight to pending files (no waiting on a dead server per run)."""

    def __init__(self, project_root: str | Path, experiment: str = DEFAULT_EXPERIMENT,
                 parent_file: str | Path | None = None, enabled: bool | None = None, defer: bool = False):
        self.project_root = Path(project_root).resolve()
        self.experiment = experiment
        self.parent_file = Path(parent_file) if parent_file is not None else None
        if enabled is None:
            enabled = tracking_enabled()
        self.enabled = enabled
        # deferred: record runs in pending files only and log them in one `mlflow sync` at the end of the
        # pipeline, which saves every short job the ~3 s of importing MLflow and opening the store
        self.defer = defer
        self.uri = tracking_uri(self.project_root)
        self.failure: str | None = None  # set on the first MLflow failure; later runs go straight to pending files
        self._connection: tuple[Any, str, str | None] | None = None
        self._git: dict[str, str] | None = None
        self._parent: tuple[str | None] | None = None

    @contextlib.contextmanager
    def run(self, name: str, kind: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None, run_dir: str | Path | None = None) -> Iterator["TrackedRun"]:
        """A tracked run; ended FINISHED, or FAILED (KILLED on Ctrl-C) when the body raises."""
        tracked = TrackedRun(self, name, kind, params or {}, tags or {}, run_dir)
        tracked._start()
        status = "FAILED"
        try:
            yield tracked
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracked._finish(status)

    def git(self) -> dict[str, str]:
        if self._git is None:
            self._git = git_state(self.project_root)
        return self._git

    def connect(self) -> tuple[Any, str, str | None]:
        """(client, experiment id, parent run id or None), looked up once; raises when MLflow fails."""
        if self._connection is None:
            with _http_limits(self.uri, probe=True):
                client = _client(self.uri)
                experiment_id = _retry(_ensure_experiment, client, self.experiment, self.uri)
                parent = self.parent_run_id()
                if parent and not _run_exists(client, parent):
                    _warn(f"parent run {parent} is not in {_redact(self.uri)}; logging top-level runs")
                    parent = None
            self._connection = (client, experiment_id, parent)
        return self._connection

    def parent_run_id(self) -> str | None:
        """The parent named by ``PROMPT_OT_MLFLOW_PARENT`` (a run id or a parent file), else by ``parent_file``;
        read once, without contacting MLflow (a pending record keeps it even when the store is down)."""
        if self._parent is None:
            self._parent = (self._read_parent(),)
        return self._parent[0]

    def _read_parent(self) -> str | None:
        source = os.environ.get(PARENT_ENV, "").strip()
        if source and not Path(source).is_file():
            return source
        path = Path(source) if source else self.parent_file
        if path is None or (not source and not path.exists()):
            return None  # no parent file: this invocation did not start a parent run (e.g. `dvc repro`)
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _warn(f"cannot read the MLflow parent file {path} ({_reason(exc)}); logging top-level runs")
            return None
        if info.get("tracking_uri") not in (None, self.uri):
            _warn(f"the parent run in {path} belongs to another tracking store; logging top-level runs")
            return None
        return info.get("parent_run_id")

    def note_failure(self, reason: str, run_dir: Path | None, kind: str = "train") -> None:
        """Remember the first failure (later runs then skip MLflow) and warn about it, once."""
        if self.failure is not None:
            return
        self.failure = reason
        where = f"{run_dir / pending_file(kind)}" if run_dir is not None else "nowhere (no run folder given)"
        relog = f"python -m prompt_ot mlflow sync {run_dir.parent}" if run_dir is not None else "not possible"
        _warn(f"MLflow tracking at {_redact(self.uri)} failed ({reason}); results are on disk and what MLflow "
              f"missed is recorded in {where} (and likewise for later runs); re-log with: {relog}")


class TrackedRun:
    """One run: logs to MLflow while it works and keeps a full record for ``mlflow_pending.json`` when it does not."""

    def __init__(self, tracker: Tracker, name: str, kind: str, params: Mapping[str, Any],
                 tags: Mapping[str, Any], run_dir: str | Path | None):
        self.tracker = tracker
        self.kind = kind
        self.run_dir = Path(run_dir).resolve() if run_dir is not None else None
        self.run_id: str | None = None
        self.online = False
        self._live_written = False
        self.record: dict[str, Any] = {
            "format": PENDING_FORMAT, "tracking_uri": tracker.uri, "experiment": tracker.experiment,
            "run_name": name, "parent_run_id": None, "partial_run_id": None, "status": "RUNNING",
            "start_time": _now_ms(), "end_time": None, "error": None,
            "params": flatten_params(params),
            "tags": {**{str(k): str(v) for k, v in tags.items()}, "kind": kind},
            "metrics": [], "artifacts": [],
        }

    def _start(self) -> None:
        if not self.tracker.enabled:
            return
        git = self.tracker.git()
        self.record["tags"].update(git)
        if git["git_commit"] != "unknown":
            self.record["tags"]["mlflow.source.git.commit"] = git["git_commit"]
        if self.run_dir is not None:  # a rerun replaces this folder's results, so its old record is void
            for stale in (pending_file(self.kind), synced_file(self.kind)):
                (self.run_dir / stale).unlink(missing_ok=True)
        self.record["parent_run_id"] = self.tracker.parent_run_id()
        if self.tracker.defer:
            return
        if self.tracker.failure is not None:
            self.record["error"] = self.tracker.failure
            return
        try:
            client, experiment_id, parent = self.tracker.connect()
            self.record["parent_run_id"] = parent  # verified: None when the store does not have it
            tags = dict(self.record["tags"])
            if parent:
                tags["mlflow.parentRunId"] = parent
            with _http_limits(self.tracker.uri, probe=True):
                mine = self._end_abandoned_run(client)
                run = _retry(client.create_run, experiment_id, start_time=self.record["start_time"], tags=tags,
                             run_name=self.record["run_name"])
            self.run_id = self.record["partial_run_id"] = run.info.run_id
            self.online = True
            if mine:
                self._write_live()
            self._call(_log_batches, run.info.run_id, params=self.record["params"])
        except Exception as exc:
            self._fail(exc)

    @property
    def _live_path(self) -> Path | None:
        return self.run_dir / live_file(self.kind) if self.run_dir is not None else None

    def _write_live(self) -> None:
        """Name this run and its process in the folder, so a rerun can end it if the process is killed."""
        if self._live_path is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._live_written = True
            atomic_write_text(self._live_path, json.dumps(
                {"run_id": self.run_id, "run_name": self.record["run_name"], "tracking_uri": self.tracker.uri,
                 **owner()}, indent=1) + "\n")

    def _end_abandoned_run(self, client) -> bool:
        """End the RUNNING run a killed process left for this folder and kind (KILLED, at its last sign of life).

        False when a live process still records into the folder: then its record is left as it is."""
        path = self._live_path
        if path is None:
            return False
        try:
            info, last_ms = json.loads(path.read_text()), int(path.stat().st_mtime * 1000)
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return True
        if owner_running(info) and info.get("pid") != os.getpid():
            _warn(f"{path} says process {info.get('pid')} is still recording run {info.get('run_id')} for this "
                  f"folder; two jobs are writing {self.run_dir} at once")
            return False
        if info.get("tracking_uri") == self.tracker.uri and info.get("run_id"):
            if _end_abandoned(client, info["run_id"], last_ms, f"its process ({info.get('host')}, pid "
                              f"{info.get('pid')}) ended without closing it; found by the rerun into {self.run_dir}"):
                _warn(f"ended MLflow run {info['run_id']} ({info.get('run_name')}) as KILLED: the process that "
                      f"recorded it was killed; this rerun records a new run")
        path.unlink(missing_ok=True)
        return True

    def _call(self, fn: Callable, *args, **kwargs) -> None:
        if not self.online:
            return
        try:
            with _http_limits(self.tracker.uri, probe=False):
                fn(self.tracker.connect()[0], *args, **kwargs)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.online = False
        self.record["error"] = _reason(exc)
        self.tracker.note_failure(self.record["error"], self.run_dir, self.kind)

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten_params(params)
        self.record["params"].update(flat)
        if self.run_id:
            self._call(_log_batches, self.run_id, params=flat)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        flat = {str(k): str(v) for k, v in tags.items()}
        self.record["tags"].update(flat)
        if self.run_id:
            self._call(_log_batches, self.run_id, tags=flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics at ``step`` (0 when None), e.g. once per epoch."""
        now, step = _now_ms(), int(step or 0)
        batch = [{"key": str(k), "value": float(v), "step": step, "timestamp": now} for k, v in metrics.items()]
        self.record["metrics"].extend(batch)
        if self.run_id:
            self._call(_log_batches, self.run_id, metrics=batch)
            if self._live_written:
                with contextlib.suppress(OSError):  # a sign of life: a killed run is ended at its last one
                    os.utime(self._live_path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file (or a folder's contents under its name); the path must exist."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        inside = self.run_dir is not None and path.is_relative_to(self.run_dir)
        stored = path.relative_to(self.run_dir).as_posix() if inside else str(path)  # relative: the folder may move
        self.record["artifacts"].append({"path": stored, "artifact_path": artifact_path})
        if self.run_id:
            self._call(_upload, self.run_id, path, artifact_path)

    def _finish(self, status: str) -> None:
        self.record["status"], self.record["end_time"] = status, _now_ms()
        if not self.tracker.enabled:
            return
        if self.run_id:
            self._call(lambda client: _retry(client.set_terminated, self.run_id, status, self.record["end_time"]))
            if self._live_written:  # ended here, or handed to the pending record below
                self._live_path.unlink(missing_ok=True)
        if not self.online and self.run_dir is not None:
            atomic_write_text(self.run_dir / pending_file(self.kind), json.dumps(self.record, indent=1) + "\n")


def tracker_for(params: Mapping[str, Any], params_path: str | Path) -> Tracker:
    """The tracker of a stage command: the project is the folder of the params file; its ``mlflow`` block
    names the experiment and may defer logging to the end of the pipeline."""
    settings = params.get("mlflow") or {}
    return Tracker(Path(params_path).resolve().parent, settings.get("experiment", DEFAULT_EXPERIMENT),
                   parent_file=Path(params["paths"]["runs"]) / "mlflow_parent.json",
                   defer=bool(settings.get("defer", False)))


# ---------------------------------------------------------------- sync: re-log pending runs


@dataclasses.dataclass
class SyncOutcome:
    pending_file: Path
    run_id: str | None = None  # the run now in MLflow; None when this file failed
    error: str | None = None
    missing_artifacts: list[str] = dataclasses.field(default_factory=list)


def find_pending(runs_dir: str | Path) -> list[Path]:
    return sorted(Path(runs_dir).rglob(pending_file("*")))


def sync_pending(runs_dir: str | Path, project_root: str | Path) -> list[SyncOutcome]:
    """Log every ``mlflow_pending.json`` under ``runs_dir`` to the current store; each synced file becomes
    ``mlflow_synced.json`` (with the new run id). A half-logged run left by the failure is deleted first."""
    files = find_pending(runs_dir)
    if not files:
        return []
    uri = tracking_uri(project_root)
    try:
        with _http_limits(uri, probe=True):
            client = _client(uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        return [SyncOutcome(path, error=_reason(exc)) for path in files]
    outcomes = []
    for path in files:
        outcome = SyncOutcome(path)
        try:
            with _http_limits(uri, probe=False):
                _sync_one(client, uri, path, outcome)
        except Exception as exc:
            outcome.error = _reason(exc)
        outcomes.append(outcome)
    return outcomes


def _sync_one(client, uri: str, path: Path, outcome: SyncOutcome) -> None:
    record = json.loads(path.read_text())
    if record.get("format") != PENDING_FORMAT:
        raise ValueError(f"not a prompt-ot pending record (format {record.get('format')!r})")
    experiment_id = _retry(_ensure_experiment, client, record["experiment"], uri)
    partial = record.get("partial_run_id")
    if partial and record.get("tracking_uri") == uri and _run_exists(client, partial):
        _retry(client.delete_run, partial)
    tags = {**record["tags"], "prompt_ot.logged_late": "true"}
    if _run_exists(client, record.get("parent_run_id")):
        tags["mlflow.parentRunId"] = record["parent_run_id"]
    run = _retry(client.create_run, experiment_id, start_time=record["start_time"], tags=tags,
                 run_name=record["run_name"])
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, params=record["params"], metrics=record["metrics"])
        for artifact in record["artifacts"]:
            file = path.parent / artifact["path"]  # an absolute stored path stays absolute
            if file.exists():
                _upload(client, run_id, file, artifact["artifact_path"])
            else:
                outcome.missing_artifacts.append(str(file))
        _retry(client.set_terminated, run_id, record["status"], record["end_time"])
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(run_id)
        raise
    synced = {**record, "synced_run_id": run_id, "synced_to": uri, "synced_at": _now_ms(),
              "missing_artifacts": outcome.missing_artifacts}
    atomic_write_text(path.with_name(path.name.replace("mlflow_pending_", "mlflow_synced_")),
                      json.dumps(synced, indent=1) + "\n")
    path.unlink()
    outcome.run_id = run_id
