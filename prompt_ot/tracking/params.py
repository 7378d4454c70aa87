"""What a run records about where it came from: its configuration as MLflow params and the checkout's git state."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_MAX_PARAM_VALUE = 6000


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
