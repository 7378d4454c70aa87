"""Find and read the per-run metrics files into one long table (one row per run and accuracy key)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.results import FORMAT, read_metrics

RUN_KEYS = ["protocol", "method", "dataset", "shots", "seed"]  # what identifies one run
# every column of a run that is not an accuracy (the wide frame's other columns are accuracy keys)
RUN_COLUMNS = RUN_KEYS + ["base_method", "weight", "adaptive", "backbone", "path", "recipe", "tested_epoch", "epochs"]


def metrics_paths(files=None, list_file=None, directory=None, pattern: str = "*.json") -> list[Path]:
    """The metrics files named directly, listed one per line in ``list_file``, or found under ``directory``.

    A list file may hold blank lines and ``#`` comments; relative paths in it are taken from the current
    folder (as a workflow writes them). Under ``directory``, JSON files of another format (manifests,
    configs) are skipped; unreadable JSON is an error, since it may be a metrics file cut short.
    """
    if files:
        return [Path(f) for f in files]
    if list_file:
        list_file = Path(list_file)
        if not list_file.is_file():
            raise UserError(f"metrics list {list_file} does not exist")
        lines = (line.strip() for line in list_file.read_text().splitlines())
        return [Path(line) for line in lines if line and not line.startswith("#")]
    if directory:
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"metrics folder {directory} does not exist; run the evaluate stage first")
        return [p for p in sorted(directory.rglob(pattern)) if p.is_file() and not _other_json(p)]
    raise UserError("no input: give metrics files with --metrics, --metrics-list or --metrics-dir")


def _other_json(path: Path) -> bool:
    """True for valid JSON that is not a metrics file (skipped when scanning a folder)."""
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # read_metrics reports it, naming the file
    return not (isinstance(raw, dict) and raw.get("format") == FORMAT)


def _check(metrics, path: Path) -> None:
    keys = set(metrics.accuracy)
    if metrics.protocol == "base2novel" and not {"base", "novel"} <= keys:
        raise UserError(
            f"metrics file {path}: a base2novel run needs accuracies 'base' and 'novel', has {sorted(keys)}"
        )
    if metrics.protocol == "few_shot" and "all" not in keys:
        raise UserError(f"metrics file {path}: a few_shot run needs accuracy 'all', has {sorted(keys)}")
    if not keys:
        raise UserError(f"metrics file {path} has no accuracies")


def load_runs(paths: list[Path]) -> pd.DataFrame:
    """One row per run: RUN_COLUMNS (recipe, the epoch tested and the epochs trained among them), ``accuracy`` and
    ``n`` (test images per accuracy key).

    A base2novel run's accuracy also gets ``hm`` = 2BN/(B+N), computed here from its base and novel.
    """
    if not paths:
        raise UserError("no metrics files to report on (the input was empty); run the evaluate stage first")
    rows, seen, backbones = [], {}, {}
    for path in paths:
        metrics = read_metrics(path)
        _check(metrics, path)
        run = tuple(getattr(metrics, k) for k in RUN_KEYS)
        if run in seen:
            raise UserError(
                f"metrics files {seen[run]} and {path} describe the same run {dict(zip(RUN_KEYS, run))}; "
                f"keep one of them"
            )
        seen[run] = path
        backbones.setdefault(metrics.backbone, path)
        accuracy = {k: float(v) for k, v in metrics.accuracy.items()}
        if metrics.protocol == "base2novel":
            base, novel = accuracy["base"], accuracy["novel"]
            accuracy["hm"] = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
        weight = metrics.regulariser_weight
        rows.append(
            {
                **dict(zip(RUN_KEYS, run)),
                "base_method": metrics.base_method or metrics.method,
                "weight": float("nan") if weight is None else float(weight),
                "adaptive": bool(metrics.regulariser_adaptive),
                "backbone": metrics.backbone,
                "path": str(path),
                "recipe": metrics.recipe,
                "tested_epoch": metrics.epoch,
                "epochs": metrics.epochs,
                "accuracy": accuracy,
                "n": {k: int(v) for k, v in (metrics.n or {}).items()},  # test images per accuracy key
                "class_metrics": metrics.class_metrics or {},  # per-class accuracy, balanced accuracy, macro-F1
            }
        )
    if len(backbones) > 1:
        listed = "; ".join(f"{b} (e.g. {p})" for b, p in backbones.items())
        raise UserError(f"the metrics files mix backbones: {listed}; report one backbone at a time")
    return pd.DataFrame(rows)


def wide(runs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The runs of one protocol, one row per run and one column per accuracy key (NaN where a run lacks it)."""
    part = runs[runs["protocol"] == protocol].reset_index(drop=True)
    accuracy = pd.DataFrame(list(part["accuracy"]), index=part.index, dtype=float)
    extra = ["accuracy", "n", "class_metrics"]
    return pd.concat([part.drop(columns=extra, errors="ignore"), accuracy], axis=1)
