"""Ending runs that a killed process left RUNNING: the previous pipeline's parent run, and the run a killed job
named in its folder's live record. Each is ended KILLED at its last sign of life, with the reason as a tag."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prompt_ot.tracking.messages import _warn
from prompt_ot.tracking.retry import _retry
from prompt_ot.tracking.store import _error_code
from prompt_ot.utils.io import owner_running

ABANDONED_TAG = "prompt_ot.ended_as_killed"  # why a RUNNING run whose process is gone was ended KILLED


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


def _end_as_recorded(client, run_id: str, pending_end: dict) -> bool:
    """End ``run_id`` with the status and time its ``finish`` recorded when it could not reach the store, if it is
    still RUNNING; True if it was."""
    run = _retry(client.get_run, run_id)
    if run.info.status != "RUNNING":
        return False
    _retry(client.set_terminated, run_id, pending_end["status"], pending_end["end_time"])
    return True


def _end_previous_parent(client, out: Path, uri: str, name: str) -> None:
    """The parent run of the previous pipeline invocation stays RUNNING when that invocation was killed
    before its end handler ran; a new invocation (Snakemake locks the folder: never two at once) ends it.
    One that did end but could not reach the store (``pending_end``) is ended as it ended, not KILLED."""
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return
    run_id = previous.get("parent_run_id")
    if not run_id or previous.get("tracking_uri") != uri:
        return
    if previous.get("pending_end"):
        _end_as_recorded(client, run_id, previous["pending_end"])
        return
    ended_ms = int(out.stat().st_mtime * 1000)
    if _end_abandoned(client, run_id, ended_ms, f"its pipeline ended without closing it; found by {name}"):
        _warn(
            f"ended the previous pipeline's MLflow parent run {run_id} as KILLED: that invocation was "
            f"interrupted before it could close it"
        )


def _end_abandoned_live_run(client, path: Path, run_dir: Path, uri: str) -> bool:
    """End the RUNNING run a killed process left for this folder and kind (KILLED, at its last sign of life),
    as named by the live record at ``path``.

    False when a live process still records into the folder: then its record is left as it is."""
    try:
        info, last_ms = json.loads(path.read_text()), int(path.stat().st_mtime * 1000)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return True
    if owner_running(info) and info.get("pid") != os.getpid():
        _warn(
            f"{path} says process {info.get('pid')} is still recording run {info.get('run_id')} for this "
            f"folder; two jobs are writing {run_dir} at once"
        )
        return False
    if info.get("tracking_uri") == uri and info.get("run_id"):
        if _end_abandoned(
            client,
            info["run_id"],
            last_ms,
            f"its process ({info.get('host')}, pid "
            f"{info.get('pid')}) ended without closing it; found by the rerun into {run_dir}",
        ):
            _warn(
                f"ended MLflow run {info['run_id']} ({info.get('run_name')}) as KILLED: the process that "
                f"recorded it was killed; this rerun records a new run"
            )
    path.unlink(missing_ok=True)
    return True
