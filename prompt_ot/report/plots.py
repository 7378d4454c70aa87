"""Figures (matplotlib, no display needed): the base/novel trade-off, lambda sweeps and few-shot curves.

Each figure is written as PNG and PDF, atomically; the PDF carries no creation date, so reruns on the
same numbers give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from prompt_ot.report.model import Table
from prompt_ot.report.names import method_name
from prompt_ot.report.stats import harmonic_mean
from prompt_ot.utils.io import atomic_path

MARKERS = "osD^vP"  # the colour cycle has 10 colours; the marker changes every 10 methods


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    written = []
    for fmt, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out / f"{stem}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        written.append(path)
    return written


def _std(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def tradeoff(average: Table, out: Path) -> list[Path]:
    """Average base vs novel accuracy, one point per method with error bars over seeds; HM contours behind."""
    rows = [r for r in average.rows if not r.published]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    base = [r.cells["base"].mean for r in rows]
    novel = [r.cells["novel"].mean for r in rows]
    lo, hi = min(base + novel) - 5, max(base + novel) + 5
    grid = np.linspace(max(lo, 0.1), min(hi, 100), 200)
    b, n = np.meshgrid(grid, grid)
    contours = ax.contour(b, n, harmonic_mean(b, n), colors="0.8", linewidths=0.8, levels=8)
    ax.clabel(contours, fmt="HM %.0f", fontsize=7)
    for i, row in enumerate(rows):
        base_cell, novel_cell = row.cells["base"], row.cells["novel"]
        ax.errorbar(
            base_cell.mean,
            novel_cell.mean,
            xerr=_std(base_cell.std),
            yerr=_std(novel_cell.std),
            fmt=MARKERS[i // 10 % len(MARKERS)],
            capsize=3,
            label=row.label,
        )
    ax.set_xlabel("base accuracy (%), average over datasets")
    ax.set_ylabel("novel accuracy (%), average over datasets")
    ax.set_title("Base-to-novel trade-off (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _save(fig, out, "base2novel_tradeoff")


def lambda_sweeps(average: Table) -> dict[str, list]:
    """base_method -> its rows sorted by lambda, for every method run with at least two distinct fixed lambdas;
    rows of an adaptive lambda (``extra["adaptive"]``) of the same base follow, to be marked on the figure."""
    sweeps: dict[str, list] = {}
    adaptive: dict[str, list] = {}
    for row in average.rows:
        if row.published:
            continue
        if row.extra.get("adaptive"):
            adaptive.setdefault(row.extra["base_method"], []).append(row)
        elif row.extra.get("lambda") is not None:
            sweeps.setdefault(row.extra["base_method"], []).append(row)
    return {
        base: sorted(rows, key=lambda r: r.extra["lambda"]) + adaptive.get(base, [])
        for base, rows in sweeps.items()
        if len({r.extra["lambda"] for r in rows}) >= 2
    }


ADAPTIVE_MARKERS = "*Xp"


def lambda_sweep(base_method: str, rows: list, out: Path) -> list[Path]:
    """Base, novel and HM (of the averages) against the regulariser weight lambda.

    A row of an adaptive lambda is not a point of the curves: it is marked on each curve (in the curve's colour,
    a star for the first such row) at the mean of its runs' lambda when tested (``extra["adaptive_lambda"]``),
    with a dotted vertical line there and a legend entry giving that value."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    adaptive = [r for r in rows if r.extra.get("adaptive")]
    rows = [r for r in rows if not r.extra.get("adaptive")]
    weights = [r.extra["lambda"] for r in rows]
    for column, label in (("base", "base"), ("novel", "novel"), ("hm_of_avg", "HM of averages")):
        line = ax.errorbar(
            weights,
            [r.cells[column].mean for r in rows],
            yerr=[_std(r.cells[column].std) for r in rows],
            marker="o",
            capsize=3,
            label=label,
        )
        colour = line.lines[0].get_color()
        for k, row in enumerate(adaptive):
            ax.errorbar(
                [row.extra["adaptive_lambda"]],
                [row.cells[column].mean],
                yerr=[_std(row.cells[column].std)],
                marker=ADAPTIVE_MARKERS[k % len(ADAPTIVE_MARKERS)],
                markersize=11,
                color=colour,
                markeredgecolor="black",
                capsize=3,
                linestyle="none",
            )
    for k, row in enumerate(adaptive):  # a dotted line at its lambda; the legend shows its marker
        ax.axvline(row.extra["adaptive_lambda"], color="0.5", linestyle=":", linewidth=1)
        ax.plot(
            [],
            [],
            marker=ADAPTIVE_MARKERS[k % len(ADAPTIVE_MARKERS)],
            markersize=9,
            color="0.5",
            markeredgecolor="black",
            linestyle=":",
            label=f"{row.label}: mean λ when tested {row.extra['adaptive_lambda']:.3g}",
        )
    weights = weights + [r.extra["adaptive_lambda"] for r in adaptive]
    positive = [w for w in weights if w > 0]
    if positive and max(weights) / min(positive) >= 10:
        ax.set_xscale(
            "log" if len(positive) == len(weights) else "symlog",
            **({} if len(positive) == len(weights) else {"linthresh": min(positive)}),
        )
    ax.set_xlabel("regulariser weight λ")
    ax.set_ylabel("accuracy (%), average over datasets")
    ax.set_title(f"{method_name(base_method)}: accuracy against λ (mean ± std over seeds)")
    ax.legend(fontsize=8 if not adaptive else 7)
    return _save(fig, out, f"lambda_sweep_{base_method}")


def few_shot(table: Table, out: Path) -> list[Path]:
    """Average accuracy against shots per class, one line per method."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for row in table.rows:
        shots = [k for k in table.columns if k in row.cells and not math.isnan(row.cells[k].mean)]
        ax.errorbar(
            [int(k) for k in shots],
            [row.cells[k].mean for k in shots],
            yerr=[_std(row.cells[k].std) for k in shots],
            marker="o",
            capsize=3,
            label=row.label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shots per class")
    ax.set_ylabel("accuracy (%), average over datasets")
    ax.set_title("Few-shot classification (mean ± std over seeds)")
    ax.legend(fontsize=7)
    return _save(fig, out, "few_shot")
