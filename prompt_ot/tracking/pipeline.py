"""The pipeline's side of tracking: ``prepare`` creates the store, the experiment and a parent run once, before
runs fan out (ending the previous invocation's parent if it was left running); ``finish`` ends that parent run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import prompt_ot.tracking.store as _store  # `_store._client` is looked up at call time: tests replace it there
from prompt_ot.tracking.cleanup import _end_as_recorded, _end_previous_parent
from prompt_ot.tracking.messages import _reason, _redact, _warn
from prompt_ot.tracking.params import git_state
from prompt_ot.tracking.records import _now_ms, pending_file
from prompt_ot.tracking.retry import _retry
from prompt_ot.tracking.store import (
    DEFAULT_EXPERIMENT,
    ENABLE_ENV,
    _ensure_experiment,
    _http_limits,
    tracking_enabled,
    tracking_uri,
)
from prompt_ot.utils.io import atomic_write_text


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
    info: dict[str, Any] = {
        "tracking_uri": uri,
        "experiment": experiment,
        "experiment_id": None,
        "parent_run_id": None,
        "parent_run_name": name,
        "error": None,
    }
    if not tracking_enabled():  # no store, no parent run, no warning: the runs will not be tracked either
        info["error"] = f"tracking is off ({ENABLE_ENV}={os.environ.get(ENABLE_ENV)})"
        if out is not None:
            atomic_write_text(out, json.dumps(info, indent=2) + "\n")
        return info
    try:
        with _http_limits(uri, probe=True):
            client = _store._client(uri)
            info["experiment_id"] = _retry(_ensure_experiment, client, experiment, uri)
            if out is not None:
                _end_previous_parent(client, Path(out), uri, name)
            tags = {"kind": "pipeline", **git_state(root)}
            parent = _retry(client.create_run, info["experiment_id"], tags=tags, run_name=name)
            info["parent_run_id"] = parent.info.run_id
    except Exception as exc:
        info["error"] = _reason(exc)
        _warn(
            f"MLflow tracking at {_redact(uri)} is unavailable ({info['error']}); runs will record their results "
            f"in {pending_file('<kind>')} in their folders; re-log them later with: "
            "python -m prompt_ot mlflow sync <runs dir>"
        )
    if out is not None:
        atomic_write_text(out, json.dumps(info, indent=2) + "\n")
    return info


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
            client = _store._client(info["tracking_uri"])
            _retry(client.set_terminated, run_id, status=status)
    except Exception as exc:
        # the end is recorded in the parent file; `mlflow sync` (or the next pipeline's `prepare`) applies it
        info["pending_end"] = {"status": status, "end_time": _now_ms()}
        atomic_write_text(path, json.dumps(info, indent=2) + "\n")
        _warn(
            f"could not end the MLflow parent run {run_id} ({_reason(exc)}); it stays RUNNING until "
            f"`python -m prompt_ot mlflow sync {path.parent}` ends it {status}"
        )
        return None
    return run_id


def end_pending_parent(client, uri: str, parent_file: Path) -> str | None:
    """End the parent run whose :func:`finish` could not reach the store (``pending_end`` in ``parent_file``), with
    the status and time ``finish`` recorded, and drop the record; the run id when there was one to end."""
    try:
        info = json.loads(parent_file.read_text())
    except (OSError, ValueError):
        return None
    run_id, pending_end = info.get("parent_run_id"), info.get("pending_end")
    if not run_id or not pending_end or info.get("tracking_uri") != uri:
        return None
    _end_as_recorded(client, run_id, pending_end)
    del info["pending_end"]
    atomic_write_text(parent_file, json.dumps(info, indent=2) + "\n")
    return run_id
