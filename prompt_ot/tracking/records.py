"""The files a run keeps in its folder for tracking: their names, the pending record's format and timestamps,
and finding the pending records that ``sync`` re-logs."""

from __future__ import annotations

import time
from pathlib import Path

PENDING_FILE = "mlflow_pending_{kind}.json"  # one per run kind, so a train and an evaluate run can share a folder
SYNCED_FILE = "mlflow_synced_{kind}.json"
LIVE_FILE = "mlflow_live_{kind}.json"  # the MLflow run a process is recording now, with its owner
PENDING_FORMAT = "prompt-ot/mlflow-pending/1"
PARENT_FILE = "mlflow_parent.json"  # the pipeline's parent run, in the runs folder (`mlflow init --out`)


def live_file(kind: str) -> str:
    return LIVE_FILE.format(kind=kind)


def pending_file(kind: str) -> str:
    return PENDING_FILE.format(kind=kind)


def synced_file(kind: str) -> str:
    return SYNCED_FILE.format(kind=kind)


def find_pending(runs_dir: str | Path) -> list[Path]:
    return sorted(Path(runs_dir).rglob(pending_file("*")))


def _now_ms() -> int:
    return int(time.time() * 1000)
