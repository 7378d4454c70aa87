"""Figures (matplotlib, no display needed): the base/novel trade-off, cross-dataset transfer, domain generalisation,
few-shot curves and lambda sweeps.

Every method has one style, a colour and a marker of its own, the same in every figure (``method_styles``): the
registry's methods keep their slots in every report, other methods (variants) take the next ones in table order.
Zero-shot CLIP is a large black star drawn above every other point; published rows are hollow markers, in their
method's colour where the name is one of ours. Each figure is drawn into a ``Figure`` (``draw_*``) and written as PNG
and PDF, atomically; the PDF carries no creation date, so reruns on the same numbers give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from prompt_ot.report.model import Row, Table
from prompt_ot.report.names import METHOD_NAMES, dataset_name, method_name
from prompt_ot.report.stats import harmonic_mean
from prompt_ot.utils.io import atomic_path

ZERO_SHOT = "zeroshot"
# 16 colours, none repeated (tab10 without its grey, then the dark shades of tab20b and two of Dark2); black is
# zero-shot's and grey the published rows' without a method of ours
PALETTE = (
    "#1f77b4",  # blue
    "#17becf",  # cyan
    "#393b79",  # indigo
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#8c564b",  # brown
    "#9467bd",  # purple
    "#e377c2",  # pink
    "#bcbd22",  # olive
    "#843c39",  # dark red
    "#7b4173",  # plum
    "#d62728",  # red: Prompt-OT (ours)
    "#637939",  # moss
    "#8c6d31",  # bronze
    "#e6ab02",  # mustard
    "#1b9e77",  # teal
    "#a55194",  # orchid
    "#6b6ecf",  # periwinkle
)
MARKERS = "osD^vPXph<>d"
PUBLISHED_COLOUR = "0.45"
# the registry's methods (zero-shot aside) own the first slots, in the tables' order, in every report
FIXED_SLOTS = [m for m in METHOD_NAMES if m != ZERO_SHOT]
FIGURE_NAMES = {
    "base2novel_average": "base2novel_tradeoff",
    "cross_dataset": "cross_dataset_transfer",
    "domain_generalization": "domain_generalization",
    "few_shot": "few_shot",
}


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str
    markersize: float = 7.0
    zorder: float = 3.0
    hollow: bool = False

    def kwargs(self) -> dict:
        """Keyword arguments of ``Axes.errorbar`` / ``Axes.plot`` that draw a series in this style."""
        return {
            "color": self.colour,
            "marker": self.marker,
            "markersize": self.markersize,
            "markerfacecolor": "none" if self.hollow else self.colour,
            "markeredgecolor": self.colour,
            "zorder": self.zorder,
        }


ZERO_SHOT_STYLE = Style("black", "*", markersize=15.0, zorder=10.0)


def slot_style(slot: int) -> Style:
    """The style of slot ``slot``: colours cycle through PALETTE, markers through MARKERS, shifted once per round of
    colours, so no two of the first len(PALETTE) * len(MARKERS) slots share both."""
    return Style(PALETTE[slot % len(PALETTE)], MARKERS[(slot + slot // len(PALETTE)) % len(MARKERS)])


def method_styles(methods: Iterable[str]) -> dict[str, Style]:
    """Method key -> its style, for the methods given (duplicates ignored): zero-shot CLIP a black star above the
    rest, each registry method its own slot, any other method the next free slot in the order given."""
    styles: dict[str, Style] = {}
    extra = 0
    for method in dict.fromkeys(methods):
        if method == ZERO_SHOT:
            styles[method] = ZERO_SHOT_STYLE
        elif method in FIXED_SLOTS:
            styles[method] = slot_style(FIXED_SLOTS.index(method))
        else:
            styles[method] = slot_style(len(FIXED_SLOTS) + extra)
            extra += 1
    return styles


def method_style(method: str, styles: dict[str, Style] | None = None) -> Style:
    """The style of one method: from ``styles`` when it is there, else its own (a registry method's fixed one)."""
    return (styles or {}).get(method) or method_styles([method])[method]


_BY_DISPLAY_NAME = {name: key for key, name in METHOD_NAMES.items()}


def _series(rows: list[Row], styles: dict[str, Style] | None) -> list[tuple[Row, Style, str]]:
    """(row, style, legend label) per row: ours in their method's style, published rows hollow (their method's colour
    and marker where the name is one of ours, else grey with a marker of their own) and behind ours."""
    styles = styles if styles is not None else method_styles(r.key for r in rows if not r.published)
    out, unknown = [], 0
    for row in rows:
        if not row.published:
            out.append((row, method_style(row.key, styles), row.label))
            continue
        # "CoOp" is ours; so is "IVLP (independent V-L prompting)", our name plus a gloss
        key = _BY_DISPLAY_NAME.get(row.key) or _BY_DISPLAY_NAME.get(row.key.split(" (")[0])
        if key is not None:
            style = replace(method_style(key, styles), hollow=True, zorder=2.0)
        else:
            style = Style(PUBLISHED_COLOUR, MARKERS[unknown % len(MARKERS)], zorder=2.0, hollow=True)
            unknown += 1
        out.append((row, style, f"{row.label} (published)"))
    return out


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


def _errors(cells) -> list[float] | None:
    """The error bars of a series: its stds (0 where a point has none), or None where no point has one (published
    numbers, a single seed), so that no bar of zero length is drawn."""
    cells = list(cells)
    return None if all(math.isnan(c.std) for c in cells) else [_std(c.std) for c in cells]


def _has(row: Row, column: str) -> bool:
    return column in row.cells and not math.isnan(row.cells[column].mean)


def _figure_legend(fig: Figure) -> None:
    """One legend for all panels, right of them: each label once, in the order first drawn."""
    handles: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def draw_tradeoff(average: Table, styles: dict[str, Style] | None = None) -> Figure:
    """Average base vs novel accuracy, one point per method with error bars over seeds; HM contours behind."""
    rows = [r for r in average.rows if _has(r, "base") and _has(r, "novel")]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    values = [r.cells[c].mean for r in rows for c in ("base", "novel")] or [50.0]
    lo, hi = min(values) - 5, max(values) + 5
    grid = np.linspace(max(lo, 0.1), min(hi, 100), 200)
    b, n = np.meshgrid(grid, grid)
    contours = ax.contour(b, n, harmonic_mean(b, n), colors="0.8", linewidths=0.8, levels=8)
    ax.clabel(contours, fmt="HM %.0f", fontsize=7)
    for row, style, label in _series(rows, styles):
        base_cell, novel_cell = row.cells["base"], row.cells["novel"]
        ax.errorbar(
            [base_cell.mean],
            [novel_cell.mean],
            xerr=_errors([base_cell]),
            yerr=_errors([novel_cell]),
            linestyle="none",
            capsize=3,
            label=label,
            **style.kwargs(),
        )
    ax.set_xlabel("base accuracy (%), average over datasets")
    ax.set_ylabel("novel accuracy (%), average over datasets")
    ax.set_title("Base-to-novel trade-off (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def tradeoff(average: Table, out: Path, styles: dict[str, Style] | None = None) -> list[Path]:
    return _save(draw_tradeoff(average, styles), out, FIGURE_NAMES["base2novel_average"])


def _transfer_panels(table: Table) -> list[tuple[str | None, list[tuple[str, str]], list[Row]]]:
    """(source dataset, [(column, tick label)], rows) per source dataset: the columns some row of it has a value in."""
    sources = list(dict.fromkeys(r.extra.get("source_dataset") for r in table.rows if not r.published))
    sources = sources or [None]
    panels = []
    for source in sources:  # published rows (quoted for ImageNet, the only source then) in the first panel
        rows = [
            r for r in table.rows if r.extra.get("source_dataset") == source or (r.published and source == sources[0])
        ]
        columns = [(c, h) for c, h in table.columns.items() if any(_has(r, c) for r in rows)]
        if len(sources) > 1:  # the table's header says "Source" then: name this panel's
            columns = [(c, f"{dataset_name(source)} (source)" if c == "source" else h) for c, h in columns]
        panels.append((source, columns, rows))
    return panels


def draw_transfer(table: Table, styles: dict[str, Style] | None = None) -> Figure:
    """Cross-dataset or domain-generalisation accuracy: x = the source, each target and the target average, one
    marker per method (dodged side by side within each column), error bars = std over seeds; one panel per source."""
    panels = _transfer_panels(table)
    width = max(len(columns) for _, columns, _ in panels)
    fig = Figure(figsize=(max(6.0, 0.9 * width + 2), 3.6 * len(panels)), layout="constrained")
    for k, (source, columns, rows) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        series = _series(rows, styles)
        step = min(0.8 / max(len(series), 1), 0.15)
        for j, (row, style, label) in enumerate(series):
            offset = (j - (len(series) - 1) / 2) * step
            drawn = [(i, c) for i, (c, _) in enumerate(columns) if _has(row, c)]
            ax.errorbar(
                [i + offset for i, _ in drawn],
                [row.cells[c].mean for _, c in drawn],
                yerr=_errors(row.cells[c] for _, c in drawn),
                linestyle="none",
                capsize=2,
                label=label,
                **style.kwargs(),
            )
        for i in range(len(columns) - 1):  # a faint dashed line between columns, a darker one before the average
            after = columns[i + 1][0]
            ax.axvline(i + 0.5, color="0.6" if after == "target_avg" else "0.9", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(columns)), [h for _, h in columns], rotation=30, ha="right")
        ax.set_xlim(-0.5, len(columns) - 0.5)
        ax.set_ylabel("accuracy (%)")
        if len(panels) > 1:
            ax.set_title(f"trained on {dataset_name(source)}", fontsize=9)
    what = "Cross-dataset transfer" if table.name == "cross_dataset" else "Domain generalisation"
    fig.suptitle(f"{what}: accuracy on the source and each target (mean ± std over seeds)", fontsize=10)
    _figure_legend(fig)
    return fig


def transfer(table: Table, out: Path, styles: dict[str, Style] | None = None) -> list[Path]:
    """``figures/cross_dataset_transfer`` or ``figures/domain_generalization``, from the table of that name."""
    return _save(draw_transfer(table, styles), out, FIGURE_NAMES[table.name])


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


DODGE = 0.15  # the few-shot figure's points lie within 2**±DODGE of their shot count


def draw_few_shot(
    table: Table, per_dataset: dict[str, Table] | None = None, styles: dict[str, Style] | None = None
) -> Figure:
    """Accuracy against shots per class (log-2 axis), one line per method: one panel per dataset of
    ``per_dataset`` (the few-shot table on that dataset's runs alone) and one for the average over datasets. The
    methods' points sit side by side around each shot count (within DODGE of it on the log-2 axis) so that their error
    bars do not hide each other."""
    per_dataset = per_dataset or {}
    if len(per_dataset) == 1:
        panels = [(dataset_name(next(iter(per_dataset))), table)]  # the average is that dataset's
    else:
        panels = [(dataset_name(d), t) for d, t in per_dataset.items()]
        panels.append((f"Average over {len(per_dataset)} datasets" if per_dataset else "Average over datasets", table))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    styles = styles if styles is not None else method_styles(r.key for r in table.rows if not r.published)
    for k, (title, panel) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        shots = [int(c) for c in panel.columns]
        drawn = _series(panel.rows, styles)
        step = 2 * DODGE / max(len(drawn) - 1, 1)
        for j, (row, style, label) in enumerate(drawn):
            present = [c for c in panel.columns if _has(row, c)]
            shift = 2 ** ((j - (len(drawn) - 1) / 2) * step)
            ax.errorbar(
                [int(c) * shift for c in present],
                [row.cells[c].mean for c in present],
                yerr=_errors(row.cells[c] for c in present),
                capsize=2,
                linewidth=1.2,
                elinewidth=0.8,
                label=label,
                **style.kwargs(),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=9)
    fig.suptitle("Few-shot classification: accuracy on all classes (mean ± std over seeds)", fontsize=10)
    _figure_legend(fig)
    return fig


def few_shot(
    table: Table, out: Path, per_dataset: dict[str, Table] | None = None, styles: dict[str, Style] | None = None
) -> list[Path]:
    return _save(draw_few_shot(table, per_dataset, styles), out, FIGURE_NAMES["few_shot"])
