"""Sending a run's data to MLflow: params, tags and metrics in batches that each fit one call, and artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prompt_ot.tracking.retry import _retry

# MLflow's own limits (mlflow.utils.validation); our batches stay inside them so each call is one transaction.
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


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
