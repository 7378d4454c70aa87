"""One tracked run: it logs to MLflow while it works, keeps a full record for its pending file when it cannot,
names itself in a live record while it runs, and ends the run a killed predecessor left for its folder."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prompt_ot.tracking.batches import _log_batches, _upload
from prompt_ot.tracking.cleanup import _end_abandoned_live_run
from prompt_ot.tracking.messages import _reason
from prompt_ot.tracking.params import flatten_params
from prompt_ot.tracking.records import PENDING_FORMAT, _now_ms, live_file, pending_file, synced_file
from prompt_ot.tracking.retry import _retry
from prompt_ot.tracking.store import _http_limits
from prompt_ot.utils.io import atomic_write_text, owner

if TYPE_CHECKING:
    from prompt_ot.tracking.tracker import Tracker


class TrackedRun:
    """One run: logs to MLflow while it works and keeps a full record for ``mlflow_pending.json`` when it does not."""

    def __init__(
        self,
        tracker: Tracker,
        name: str,
        kind: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        run_dir: str | Path | None,
    ):
        self.tracker = tracker
        self.kind = kind
        self.run_dir = Path(run_dir).resolve() if run_dir is not None else None
        self.run_id: str | None = None
        self.online = False
        self._live_written = False
        self.record: dict[str, Any] = {
            "format": PENDING_FORMAT,
            "tracking_uri": tracker.uri,
            "experiment": tracker.experiment,
            "run_name": name,
            "parent_run_id": None,
            "partial_run_id": None,
            "status": "RUNNING",
            "start_time": _now_ms(),
            "end_time": None,
            "error": None,
            "params": flatten_params(params),
            "tags": {**{str(k): str(v) for k, v in tags.items()}, "kind": kind},
            "metrics": [],
            "artifacts": [],
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
                run = _retry(
                    client.create_run,
                    experiment_id,
                    start_time=self.record["start_time"],
                    tags=tags,
                    run_name=self.record["run_name"],
                )
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
            atomic_write_text(
                self._live_path,
                json.dumps(
                    {
                        "run_id": self.run_id,
                        "run_name": self.record["run_name"],
                        "tracking_uri": self.tracker.uri,
                        **owner(),
                    },
                    indent=1,
                )
                + "\n",
            )

    def _end_abandoned_run(self, client) -> bool:
        """End the RUNNING run a killed process left for this folder and kind; False when there is no folder, or
        when a live process still records into it (then its record is left as it is)."""
        if self._live_path is None:
            return False
        return _end_abandoned_live_run(client, self._live_path, self.run_dir, self.tracker.uri)

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
