"""Statistics over seeds and datasets, on the wide per-run frames of ``collect.wide``.

Every reported number is a mean ± sample standard deviation (ddof=1) over seeds. For an average over
datasets, the mean is the average of the per-dataset seed means (so every run counts, even where a seed
is missing) and the ± is the spread over seeds of the per-seed dataset averages, taken over the seeds
that cover every dataset of the row. With all seeds present the two agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from prompt_ot.report.model import Cell


def harmonic_mean(base, novel):
    """2BN/(B+N), elementwise on numbers or pandas objects (0 where both are 0)."""
    total = base + novel
    return 2 * base * novel / (total + (total == 0))  # accuracies are >= 0, so a zero total means 0/1


def seed_cells(runs: pd.DataFrame, metrics: list[str]) -> dict[str, Cell]:
    """Mean ± std over the runs (seeds) of one row, per metric; NaN values (a key a run lacks) are skipped."""
    cells = {}
    for metric in metrics:
        values = runs[metric].dropna() if metric in runs else pd.Series(dtype=float)
        cells[metric] = Cell(float(values.mean()), float(values.std(ddof=1)), int(values.size))
    return cells


@dataclass
class DatasetAverage:
    mean: pd.Series  # metric -> average over datasets of the per-dataset seed means
    per_seed: pd.DataFrame  # seed x metric: dataset averages of the seeds that cover every dataset
    n_datasets: int

    def cell(self, metric: str) -> Cell:
        values = self.per_seed[metric]
        return Cell(float(self.mean[metric]), float(values.std(ddof=1)), int(values.size))


def dataset_average(runs: pd.DataFrame, metrics: list[str]) -> DatasetAverage:
    """Average over datasets of the runs of one row (one method; several datasets and seeds)."""
    per_dataset = runs.groupby("dataset")[metrics].mean()
    n_datasets = len(per_dataset)
    covered = runs.groupby("seed")["dataset"].nunique()
    complete = covered.index[covered == n_datasets]
    per_seed = runs[runs["seed"].isin(complete)].groupby("seed")[metrics].mean()
    return DatasetAverage(per_dataset.mean(), per_seed, n_datasets)


def missing_seed_warnings(runs: pd.DataFrame, protocol: str, by: list[str]) -> list[str]:
    """One line per (row, dataset) that lacks some of the seeds its row has elsewhere."""
    lines = []
    for key, part in runs.groupby(by, sort=True):
        seeds = set(part["seed"])
        for dataset, runs_of_dataset in part.groupby("dataset", sort=True):
            missing = sorted(seeds - set(runs_of_dataset["seed"]))
            if missing:
                label = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
                lines.append(
                    f"{protocol} {label} on {dataset}: {len(seeds) - len(missing)} of {len(seeds)} seeds "
                    f"(missing {', '.join(map(str, missing))}); its mean uses the seeds present"
                )
    return lines
