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

The modules, from the bottom up:

- ``retry``: recognising a locked SQLite store and retrying a call with a bounded backoff;
- ``store``: whether tracking is on, the store's URI and artifact folder, the client, HTTP limits, experiment
  and run look-ups;
- ``batches``: logging params, tags, metrics and artifacts in calls MLflow takes in one transaction;
- ``params``: a run's config as MLflow params, and the checkout's git state;
- ``records``: the names and format of the pending, synced and live records a run keeps in its folder;
- ``messages``: warnings, short failure reasons, URIs with credentials hidden;
- ``cleanup``: ending runs a killed process left RUNNING (a previous parent run, a killed job's run);
- ``pipeline``: ``prepare`` and ``finish``, the pipeline's parent run;
- ``run`` and ``tracker``: ``TrackedRun`` and the ``Tracker`` that opens them (``tracker_for`` for a stage);
- ``sync``: ``sync_pending``, re-logging pending records.

Tests replace ``store._client`` and ``retry._is_locked`` where they are defined: callers look them up there at call
time.
"""

from prompt_ot.tracking.cleanup import ABANDONED_TAG
from prompt_ot.tracking.params import flatten_params, git_state
from prompt_ot.tracking.pipeline import finish, prepare
from prompt_ot.tracking.records import (
    LIVE_FILE,
    PENDING_FILE,
    PENDING_FORMAT,
    SYNCED_FILE,
    find_pending,
    live_file,
    pending_file,
    synced_file,
)
from prompt_ot.tracking.retry import LOCK_RETRY_SECONDS
from prompt_ot.tracking.run import TrackedRun
from prompt_ot.tracking.store import DEFAULT_EXPERIMENT, ENABLE_ENV, artifact_location, tracking_enabled, tracking_uri
from prompt_ot.tracking.sync import SyncOutcome, sync_pending
from prompt_ot.tracking.tracker import PARENT_ENV, Tracker, tracker_for

__all__ = [
    "ABANDONED_TAG",
    "DEFAULT_EXPERIMENT",
    "ENABLE_ENV",
    "LIVE_FILE",
    "LOCK_RETRY_SECONDS",
    "PARENT_ENV",
    "PENDING_FILE",
    "PENDING_FORMAT",
    "SYNCED_FILE",
    "SyncOutcome",
    "TrackedRun",
    "Tracker",
    "artifact_location",
    "find_pending",
    "finish",
    "flatten_params",
    "git_state",
    "live_file",
    "pending_file",
    "prepare",
    "sync_pending",
    "synced_file",
    "tracker_for",
    "tracking_enabled",
    "tracking_uri",
]
