"""The in-memory shape of a report table, shared by the builders (numbers) and the writers (LaTeX/CSV/Markdown)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DECIMALS = 2  # printed precision; bold is decided on the numbers rounded to it


@dataclass(frozen=True)
class Cell:
    """Mean and sample standard deviation (ddof=1; NaN for one seed) over ``n_seeds`` seeds."""

    mean: float = math.nan
    std: float = math.nan
    n_seeds: int = 0


@dataclass
class Row:
    key: str  # method id for our rows, the published method name for published rows
    label: str  # plain text display name
    latex_label: str  # the same, LaTeX-escaped
    cells: dict[str, Cell]
    block: str = "This suite"  # rows are printed in blocks: our rows, then published rows
    group: str | None = "all"  # rows that compete for bold; None: never bold (published rows)
    published: bool = False
    extra: dict = field(default_factory=dict)  # further CSV columns (n_datasets, source, lambda, ...)
    early: bool = False  # tested before its last epoch (marked ‡, with a note saying at which epoch)


@dataclass
class Table:
    name: str  # file stem under tables/
    title: str  # plain text caption (LaTeX-escaped when written)
    columns: dict[str, str]  # column id -> header (plain text)
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # plain text sentences appended to the caption
    long: bool = False  # a longtable that may break across pages, instead of a float
    show_blocks: bool = False  # print the block column even when there is a single block

    def multi_block(self) -> bool:
        return self.show_blocks or len({r.block for r in self.rows}) > 1

    def sources(self) -> dict[str, list[str]]:
        """Source -> the published rows (labels) quoted from it, in row order."""
        sources: dict[str, list[str]] = {}
        for row in self.rows:
            if row.published:
                sources.setdefault(row.extra.get("source") or "source not given", []).append(row.label)
        return sources


def best_mask(table: Table) -> dict[tuple[int, str], bool]:
    """(row index, column) -> bold: the highest rounded mean of a column within each group of our rows.

    Decided on numbers, never on formatted strings; ties at the printed precision are all bold; a group
    with fewer than two values in a column gets no bold there; published rows are never considered.
    """
    mask: dict[tuple[int, str], bool] = {}
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(table.rows):
        if row.group is not None and not row.published:
            groups.setdefault(row.group, []).append(i)
    for column in table.columns:
        for members in groups.values():
            values = {
                i: round(table.rows[i].cells[column].mean, DECIMALS)
                for i in members
                if column in table.rows[i].cells and not math.isnan(table.rows[i].cells[column].mean)
            }
            if len(values) < 2:
                continue
            best = max(values.values())
            for i, value in values.items():
                mask[(i, column)] = value == best
    return mask
