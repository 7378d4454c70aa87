"""Restrict the runs to the experiment grid of params.yaml and say what is missing from it.

A runs folder can hold metrics of methods, seeds or datasets that the grid no longer names; with a grid the report
shows the grid only (and says what it left out). A run of the grid without a metrics file is never dropped in
silence: the report refuses, naming the runs, unless asked to allow it; then every table with runs missing says so
in its caption and the log names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.report.collect import RUN_KEYS

SHOWN = 8  # missing runs named in the refusal before "... and N more"


@dataclass
class GridSelection:
    runs: pd.DataFrame  # the runs of the grid
    notes: list[str] = field(default_factory=list)  # what was left out (outside the grid)
    warnings: list[str] = field(default_factory=list)  # one line per group of missing runs
    missing: list[tuple] = field(default_factory=list)  # (protocol, method, dataset, shots, seed) without metrics

    def missing_notes(self, protocol: str) -> list[str]:
        """The caption sentence of a table of ``protocol`` with runs missing (empty when none is)."""
        lines = describe_missing([m for m in self.missing if m[0] == protocol], with_protocol=False)
        if not lines:
            return []
        return [f"Runs of the grid missing from these numbers ({len(lines)} groups): " + "; ".join(lines) + "."]


def dataset_option_notes(params: dict) -> list[str]:
    """The caption sentence naming the datasets whose class names or templates params.yaml sets (dataset_overrides)
    instead of the dataset's defaults, and the datasets it declares itself (custom_datasets)."""
    changed = []
    for name, block in sorted((params.get("dataset_overrides") or {}).items()):
        if name in params["datasets"]:
            what = " and ".join(
                k if k == "templates" else "class names" for k in ("classnames", "templates") if k in block
            )
            changed.append(f"{name} ({what})")
    from prompt_ot.data.registry import dataset_names

    declared = sorted(set(dataset_names("custom")) & set(params["datasets"]))
    notes = []
    if changed:
        notes.append("Defaults overridden in params.yaml (dataset_overrides): " + "; ".join(changed) + ".")
    if declared:
        notes.append("Datasets declared in params.yaml (custom_datasets): " + ", ".join(declared) + ".")
    return notes


def describe_missing(missing: list[tuple], with_protocol: bool = True) -> list[str]:
    """One phrase per (protocol, method, dataset, shots): which seeds have no metrics file."""
    groups: dict[tuple, list[int]] = {}
    for protocol, method, dataset, shots, seed in missing:
        groups.setdefault((protocol, method, dataset, shots), []).append(seed)
    lines = []
    for (protocol, method, dataset, shots), seeds in groups.items():
        where = f"{protocol} " if with_protocol else ""
        lines.append(f"{where}{method} on {dataset} ({shots} shots): seed {', '.join(map(str, sorted(seeds)))}")
    return lines


def select_grid(runs: pd.DataFrame, params: dict, source: str, allow_missing: bool = False) -> GridSelection:
    """The runs of the grid of ``params``; refuses (UserError) when some have no metrics file, unless
    ``allow_missing``."""
    from prompt_ot.config import evaluated_runs

    expected = evaluated_runs(params)
    wanted = set(expected)
    keys = list(zip(*(runs[k] for k in RUN_KEYS))) if len(runs) else []
    inside = pd.Series([key in wanted for key in keys], index=runs.index, dtype=bool)
    selection = GridSelection(runs[inside].reset_index(drop=True))
    if not inside.all():
        outside = runs[~inside]
        other_methods = sorted(set(outside["method"]) - set(params["methods"]))
        other_seeds = sorted(set(outside["seed"]) - set(params["seeds"]))
        what = [
            f"methods {', '.join(other_methods)}" if other_methods else "",
            f"seeds {', '.join(map(str, other_seeds))}" if other_seeds else "",
        ]
        what = [w for w in what if w] or ["datasets, shots or protocols the grid does not run"]
        selection.notes.append(f"left out {len(outside)} runs outside the grid of {source} ({'; '.join(what)})")
    present = set(keys)
    selection.missing = [run for run in expected if run not in present]
    if selection.missing and not allow_missing:
        lines = describe_missing(selection.missing)
        shown = "; ".join(lines[:SHOWN]) + (f"; ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else "")
        raise UserError(
            f"{len(selection.missing)} runs of the grid of {source} have no metrics file ({shown}); rerun the "
            f"pipeline (snakemake or dvc repro: it remakes exactly these and this report), or pass --allow-missing "
            f"to report without them (each table then names them)"
        )
    if selection.runs.empty:
        raise UserError(f"none of the {len(runs)} metrics files belongs to the grid of {source}")
    selection.warnings = [f"missing from the grid of {source}: {line}" for line in describe_missing(selection.missing)]
    return selection


def grid_beside(directory: str | Path | None) -> Path | None:
    """The params.yaml of the project whose runs folder ``directory`` is (``paths.runs`` names it), if any: the grid a
    report of that folder is held to when no --params is given."""
    if directory is None:
        return None
    directory = Path(directory).resolve()
    candidate = directory.parent / "params.yaml"
    if not candidate.is_file():
        return None
    import yaml

    try:
        raw = yaml.safe_load(candidate.read_text())
        runs = (raw.get("paths") or {}).get("runs")
    except (yaml.YAMLError, AttributeError, OSError):
        return None
    return candidate if runs and (directory.parent / runs).resolve() == directory else None
