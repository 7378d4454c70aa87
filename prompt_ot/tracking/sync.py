"""``sync_pending`` (``python -m prompt_ot mlflow sync``): log the runs recorded in pending files to the store,
each as one complete run, replacing any half-logged run its failure left behind."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import prompt_ot.tracking.store as _store  # `_store._client` is looked up at call time: tests replace it there
from prompt_ot.tracking.batches import _log_batches, _upload
from prompt_ot.tracking.messages import _reason, _warn
from prompt_ot.tracking.pipeline import end_pending_parent
from prompt_ot.tracking.records import PARENT_FILE, PENDING_FORMAT, _now_ms, find_pending
from prompt_ot.tracking.retry import _retry
from prompt_ot.tracking.store import _ensure_experiment, _http_limits, _run_exists, tracking_uri
from prompt_ot.utils.io import atomic_write_text


@dataclasses.dataclass
class SyncOutcome:
    pending_file: Path
    run_id: str | None = None  # the run now in MLflow; None when this file failed
    error: str | None = None
    missing_artifacts: list[str] = dataclasses.field(default_factory=list)


def sync_pending(runs_dir: str | Path, project_root: str | Path) -> list[SyncOutcome]:
    """Log every ``mlflow_pending.json`` under ``runs_dir`` to the current store; each synced file becomes
    ``mlflow_synced.json`` (with the new run id). A half-logged run left by the failure is deleted first. Then
    the pipeline's parent run (``runs_dir/mlflow_parent.json``) is ended if its ``finish`` could not reach the store."""
    files = find_pending(runs_dir)
    parent_file = Path(runs_dir) / PARENT_FILE
    try:
        parent_waits = bool(json.loads(parent_file.read_text()).get("pending_end"))
    except (OSError, ValueError, AttributeError):
        parent_waits = False
    if not files and not parent_waits:
        return []
    uri = tracking_uri(project_root)
    try:
        with _http_limits(uri, probe=True):
            client = _store._client(uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        if parent_waits:
            _warn(f"could not end the MLflow parent run named in {parent_file} ({_reason(exc)}); it stays RUNNING")
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
    if parent_waits:
        try:
            with _http_limits(uri, probe=False):
                end_pending_parent(client, uri, parent_file)
        except Exception as exc:
            _warn(f"could not end the MLflow parent run named in {parent_file} ({_reason(exc)}); it stays RUNNING")
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
    run = _retry(
        client.create_run, experiment_id, start_time=record["start_time"], tags=tags, run_name=record["run_name"]
    )
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
    synced = {
        **record,
        "synced_run_id": run_id,
        "synced_to": uri,
        "synced_at": _now_ms(),
        "missing_artifacts": outcome.missing_artifacts,
    }
    atomic_write_text(
        path.with_name(path.name.replace("mlflow_pending_", "mlflow_synced_")), json.dumps(synced, indent=1) + "\n"
    )
    path.unlink()
    outcome.run_id = run_id
