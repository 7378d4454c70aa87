"""Restrict the runs to the experiment grid of params.yaml (its methods and seeds) and say what is missing.

A runs folder can hold metrics of methods or seeds that the grid no longer names; with ``--params`` the
report shows the grid only, and warns where a configured seed has no run.
"""

from __future__ import annotations

import pandas as pd

from prompt_ot.errors import UserError


def select_grid(runs: pd.DataFrame, params: dict, source: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(runs of the grid, notes on what was left out, warnings on configured seeds without runs)."""
    methods, seeds = set(params["methods"]), set(params["seeds"])
    inside = runs["method"].isin(methods) & runs["seed"].isin(seeds)
    notes = []
    if not inside.all():
        other_methods = sorted(set(runs["method"]) - methods)
        other_seeds = sorted(set(runs["seed"]) - seeds)
        what = [
            f"methods {', '.join(other_methods)}" if other_methods else "",
            f"seeds {', '.join(map(str, other_seeds))}" if other_seeds else "",
        ]
        notes.append(
            f"left out {int((~inside).sum())} runs outside the grid of {source} ({'; '.join(w for w in what if w)})"
        )
    kept = runs[inside].reset_index(drop=True)
    if kept.empty:
        raise UserError(
            f"none of the {len(runs)} metrics files belongs to the grid of {source} (methods "
            f"{', '.join(sorted(methods))}; seeds {', '.join(map(str, sorted(seeds)))})"
        )
    warnings = []
    for (protocol, method), part in kept.groupby(["protocol", "method"], sort=True):
        missing = sorted(seeds - set(part["seed"]))
        if missing:
            warnings.append(f"{protocol} {method}: no runs for seed(s) {', '.join(map(str, missing))} of {source}")
    return kept, notes, warnings
