"""The tracker a stage command holds: it opens tracked runs in one experiment, finds their parent run, connects
to the store once and, after a first MLflow failure, sends later runs straight to pending records."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import prompt_ot.tracking.store as _store  # `_store._client` is looked up at call time: tests replace it there
from prompt_ot.tracking.messages import _reason, _redact, _warn
from prompt_ot.tracking.params import git_state
from prompt_ot.tracking.records import pending_file
from prompt_ot.tracking.retry import _retry
from prompt_ot.tracking.run import TrackedRun
from prompt_ot.tracking.store import (
    DEFAULT_EXPERIMENT,
    _ensure_experiment,
    _http_limits,
    _run_exists,
    tracking_enabled,
    tracking_uri,
)

PARENT_ENV = "PROMPT_OT_MLFLOW_PARENT"  # a parent run id, or the path of a file written by `prepare`


class Tracker:
    """Opens tracked runs in one experiment and finds their parent; after an MLflow failure, warns once and
    sends later runs straight to pending files (no waiting on a dead server per run)."""

    def __init__(
        self,
        project_root: str | Path,
        experiment: str = DEFAULT_EXPERIMENT,
        parent_file: str | Path | None = None,
        enabled: bool | None = None,
        defer: bool = False,
    ):
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
    def run(
        self,
        name: str,
        kind: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
    ) -> Iterator[TrackedRun]:
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
                client = _store._client(self.uri)
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
        _warn(
            f"MLflow tracking at {_redact(self.uri)} failed ({reason}); results are on disk and what MLflow "
            f"missed is recorded in {where} (and likewise for later runs); re-log with: {relog}"
        )


def tracker_for(params: Mapping[str, Any], params_path: str | Path) -> Tracker:
    """The tracker of a stage command: the project is the folder of the params file; its ``mlflow`` block
    names the experiment and may defer logging to the end of the pipeline."""
    settings = params.get("mlflow") or {}
    return Tracker(
        Path(params_path).resolve().parent,
        settings.get("experiment", DEFAULT_EXPERIMENT),
        parent_file=Path(params["paths"]["runs"]) / "mlflow_parent.json",
        defer=bool(settings.get("defer", False)),
    )
