"""The tracking store: whether tracking is on, where the store and its artifacts are, opening a client with
bounded HTTP patience, and the experiment and run look-ups every writer shares."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prompt_ot.tracking.retry import _retry

DEFAULT_EXPERIMENT = "prompt-ot"
ENABLE_ENV = "PROMPT_OT_MLFLOW"  # "0", "off" or "false" turns tracking off entirely
# The first contact with a server must fail fast; later calls get a little more patience unless the user set them.
_PROBE_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_RUN_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


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


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


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
