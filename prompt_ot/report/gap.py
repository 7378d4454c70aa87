"""The reproduction gap: this suite's numbers beside the published ones, their difference and a spread test.

One row per number of ours that has a published counterpart in ``reports/published/`` (``published.py``), per
metric and published source: ours (mean ± std over seeds, computed exactly as the tables compute them), the
published value, ``difference = ours_mean - published`` and ``within_spread``. Written by ``build_report`` as
``tables/reproduction_gap.{csv,tex,md}``; it is a check on the reproduction, not a results table, so
``tables/all.tex`` (the paper) does not input it.

The test, "within spread" (``within_spread``)::

    |ours_mean - published| <= k * std,   k = 2 (SPREAD_K; a parameter of ``reproduction_gap``)

where ``std`` is the sample standard deviation over seeds (ddof=1), the one the tables print after the ±: over
the seeds of one dataset, or, for an average over datasets, over the seeds' dataset averages (``stats``).
With fewer than two seeds there is no spread and the flag is n/a (empty in the CSV). It asks whether the
published number lies where our seeds fall (about 95% of them if seeds vary normally); it does not test that
the two means are equal, since the published number carries its own seed noise and comes from other code.
The comparison uses the full-precision numbers, not the printed ones.

Matching a published number to ours:
- method: the published ``method`` equals our method's registry id or its display name (``names``), ignoring
  case and a trailing parenthesised remark on either side ("Prompt-OT" matches "Prompt-OT (ours)", "IVLP
  (independent V-L prompting)" matches "IVLP"); a variant (of a λ sweep, say) matches by its registry id only.
- metric: base-to-novel base, novel and HM (a published average's HM is the HM of the averages, compared with
  our "HM of avg."; a per-dataset HM with our per-dataset HM, the mean over seeds of each run's HM);
  cross-dataset and domain generalisation the accuracy on the source (ImageNet), on each target and the
  target average; few-shot the accuracy on all classes.
- dataset: a published file names a dataset by its registry id ("dtd") or display name ("DTD"); "average"
  (or a ``target_avg`` column) is an average over datasets.
- shots: every published file but ``published_few_shot.csv`` (which says) is at 16 shots per class; our runs
  at other shots have no published number. Transfer numbers are for ImageNet as the source.
- averages: a published average covers the benchmark's datasets (11 for base-to-novel and few-shot, the 10
  cross-dataset targets, the 4 ImageNet variants); our average is compared only where it covers exactly
  those, and otherwise left out and counted apart.

Our (method, protocol, dataset or average, shots) combinations without a published number are left out and
counted; published numbers of methods we did not run are not shown.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from prompt_ot.data import registry
from prompt_ot.report import tables
from prompt_ot.report.collect import wide
from prompt_ot.report.model import DECIMALS, Cell
from prompt_ot.report.names import (
    DATASET_NAMES,
    METHOD_NAMES,
    PROTOCOL_NAMES,
    dataset_name,
    dataset_order,
    method_order,
)
from prompt_ot.report.published import Published
from prompt_ot.report.render import _latex_text, _md, format_cell
from prompt_ot.report.stats import dataset_average, seed_cells

NAME = "reproduction_gap"
SPREAD_K = 2.0
AVERAGE = "average"  # the dataset of a row that averages over datasets
PUBLISHED_SHOTS = 16  # the published files' shots per class (published_few_shot.csv has its own column)
TRANSFER_SOURCE = "imagenet"  # the source dataset of the published cross-dataset and domain-shift numbers

BENCHMARK_DATASETS = frozenset(registry.BENCHMARK_DATASETS)
CROSS_TARGETS = BENCHMARK_DATASETS - {"imagenet"}
DOMAIN_TARGETS = frozenset({"imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"})
# what a published average covers, per protocol
AVERAGE_COVERS = {
    "base2novel": BENCHMARK_DATASETS,
    "cross_dataset": CROSS_TARGETS,
    "domain_generalization": DOMAIN_TARGETS,
    "few_shot": BENCHMARK_DATASETS,
}

METRICS = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy"}
WIDE_OTHER_COLUMNS = {"method", "source", "target_avg", "protocol", "epochs", "shots"}  # not datasets

COLUMNS = [
    "protocol",
    "method",
    "name",
    "dataset",
    "shots",
    "metric",
    "ours_mean",
    "ours_std",
    "n_seeds",
    "published",
    "difference",
    "spread_limit",
    "within_spread",
    "published_method",
    "source",
]


@dataclass
class Gap:
    frame: pd.DataFrame  # one row per compared number (COLUMNS), in table order
    left_out: int = 0  # our (method, protocol, dataset or average, shots) combinations without a published number
    other_datasets: int = 0  # our averages not over the datasets the published average covers
    n_published: int = 0  # published numbers read
    backbone: str | None = None
    k: float = SPREAD_K

    def summary(self) -> str:
        """One line for the log and the index."""
        flags = self.frame["within_spread"]
        text = (
            f"reproduction gap: {_count(len(self.frame), 'number')} compared with published ones, "
            f"{int(flags.fillna(False).sum())} within {self.k:g} std over seeds"
        )
        if flags.isna().any():
            text += f", {int(flags.isna().sum())} n/a (one seed)"
        text += f"; {self.left_out_sentence()} (tables/{NAME}.md)"
        return text

    def left_out_sentence(self) -> str:
        text = (
            f"left out {_count(self.left_out, '(method, protocol, dataset) combination')} of ours without a "
            f"published number"
        )
        if self.other_datasets:
            text += (
                f", and {_count(self.other_datasets, 'average')} of ours over other datasets than the "
                f"published average's"
            )
        return text


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _normalise(name: str) -> str:
    """Lower case, one space, no trailing parenthesised remark: "Prompt-OT (ours)" -> "prompt-ot"."""
    name = " ".join(str(name).split()).casefold()
    return re.sub(r"\s*\([^()]*\)$", "", name) or name


def _match_keys(method: str, base_method: str, weight: float | None) -> set[str]:
    """The normalised names a published ``method`` may have to match ours: its id, and its display name unless
    it is a variant (a λ sweep's, say)."""
    keys = {_normalise(method)}
    if not (base_method and base_method != method) and method in METHOD_NAMES:
        keys.add(_normalise(METHOD_NAMES[method]))
    return keys


_DATASET_IDS = {**{name.casefold(): key for key, name in DATASET_NAMES.items()}, AVERAGE: AVERAGE}


def _dataset_id(text: str) -> str:
    """A published file's dataset: the registry id ("dtd"), the display name ("DTD") or "average"."""
    text = text.strip()
    return text if text in DATASET_NAMES else _DATASET_IDS.get(text.casefold(), text)


def published_numbers(published: Published) -> pd.DataFrame:
    """Every published number as one row: protocol, published_method, dataset, shots, metric, published, source,
    trained_on (the transfer source) and covers (the datasets a published average covers)."""
    records = []

    def add(protocol, pub, dataset, shots, metric, value, trained_on=""):
        if pd.isna(value) or pd.isna(shots) or not isinstance(pub["method"], str) or not isinstance(dataset, str):
            return
        dataset = _dataset_id(dataset)
        records.append(
            {
                "protocol": protocol,
                "published_method": pub["method"],
                "key": _normalise(pub["method"]),
                "dataset": dataset,
                "shots": int(shots),
                "metric": metric,
                "published": float(value),
                "source": pub.get("source") or "",
                "trained_on": trained_on,
                "covers": AVERAGE_COVERS[protocol] if dataset == AVERAGE else None,
            }
        )

    for _, pub in published.base2novel.iterrows():
        for metric in ("base", "novel", "hm"):
            add("base2novel", pub, AVERAGE, PUBLISHED_SHOTS, metric, pub[metric])
    for _, pub in published.base2novel_per_dataset.iterrows():
        for metric in ("base", "novel", "hm"):
            add("base2novel", pub, pub["dataset"], PUBLISHED_SHOTS, metric, pub[metric])
    per_dataset = {"cross_dataset": published.cross_per_dataset, "domain_generalization": published.domain_per_dataset}
    for protocol, frame in per_dataset.items():
        for _, pub in frame.iterrows():
            for column in frame.columns:
                if column not in WIDE_OTHER_COLUMNS:
                    add(protocol, pub, column, PUBLISHED_SHOTS, "accuracy", pub[column], TRANSFER_SOURCE)
            add(protocol, pub, AVERAGE, PUBLISHED_SHOTS, "accuracy", pub["target_avg"], TRANSFER_SOURCE)
    for _, pub in published.other.iterrows():  # averages; a method of a per-dataset file takes its rows there
        protocol = pub["protocol"]
        if protocol in per_dataset and pub["method"] not in set(per_dataset[protocol]["method"]):
            add(protocol, pub, TRANSFER_SOURCE, PUBLISHED_SHOTS, "accuracy", pub["source_acc"], TRANSFER_SOURCE)
            add(protocol, pub, AVERAGE, PUBLISHED_SHOTS, "accuracy", pub["target_avg"], TRANSFER_SOURCE)
    for _, pub in published.few_shot.iterrows():
        add("few_shot", pub, pub["dataset"], pub["shots"], "accuracy", pub["accuracy"])
    columns = [
        "protocol",
        "published_method",
        "key",
        "dataset",
        "shots",
        "metric",
        "published",
        "source",
        "trained_on",
        "covers",
    ]
    return pd.DataFrame(records, columns=columns)


@dataclass
class _Ours:
    protocol: str
    method: str
    base_method: str
    weight: float | None
    name: str  # the display name the tables print
    dataset: str
    shots: int
    cells: dict[str, Cell]  # metric -> mean ± std over seeds
    trained_on: str = ""
    covers: frozenset | None = None  # an average: the datasets it covers (None: its runs cover different ones)


def _identity(runs: pd.DataFrame) -> tuple[str, float | None, str]:
    """(base_method, weight, display name) of one method's runs, exactly as the tables take them."""
    [(method, base_method, weight, _)] = tables._methods(runs)
    return base_method, weight, tables._our_row(method, base_method, weight, {}, runs).label


def _per_dataset(runs: pd.DataFrame, protocol: str, cells, average) -> list[_Ours]:
    """Base-to-novel and few-shot: each (method, shots)'s cells per dataset and on average. ``cells(runs of one
    dataset)`` and ``average(runs of all datasets)`` compute them as the tables do."""
    out = []
    for (method, shots), part in wide(runs, protocol).groupby(["method", "shots"], sort=False):
        identity = _identity(part)
        for dataset, of_dataset in part.groupby("dataset", sort=False):
            out.append(_Ours(protocol, method, *identity, dataset, int(shots), cells(of_dataset)))
        covers = frozenset(part["dataset"])
        out.append(_Ours(protocol, method, *identity, AVERAGE, int(shots), average(part), covers=covers))
    return out


def _b2n_average(part: pd.DataFrame) -> dict[str, Cell]:
    cells, _ = tables.average_cells(part)
    return {"base": cells["base"], "novel": cells["novel"], "hm": cells["hm_of_avg"]}


def _transfer(runs: pd.DataFrame, protocol: str) -> list[_Ours]:
    """Cross-dataset and domain generalisation: each (method, source, shots)'s source, targets and target average."""
    out = []
    transfer, targets = tables._transfer_runs(wide(runs, protocol))
    for (method, source, shots), part in transfer.groupby(["method", "dataset", "shots"], sort=False):
        identity = _identity(part)
        columns = {source: "source", **{t: t for t in targets if part[t].notna().any()}, AVERAGE: "target_avg"}
        cells = seed_cells(part, list(columns.values()))
        covers = next(iter(set(part["targets"]))) if part["targets"].nunique() == 1 else None
        for dataset, column in columns.items():
            if not math.isnan(cells[column].mean):
                extra = {"trained_on": source, "covers": covers if dataset == AVERAGE else None}
                out.append(
                    _Ours(protocol, method, *identity, dataset, int(shots), {"accuracy": cells[column]}, **extra)
                )
    return out


def our_numbers(runs: pd.DataFrame) -> list[_Ours]:
    """Every number of ours a published one could match, computed as the tables compute it."""
    out, protocols = [], set(runs["protocol"])
    if "base2novel" in protocols:
        out += _per_dataset(runs, "base2novel", lambda part: seed_cells(part, ["base", "novel", "hm"]), _b2n_average)
    for protocol in ("cross_dataset", "domain_generalization"):
        if protocol in protocols:
            out += _transfer(runs, protocol)
    if "few_shot" in protocols:
        per_dataset = lambda part: {"accuracy": seed_cells(part, ["all"])["all"]}  # noqa: E731
        average = lambda part: {"accuracy": dataset_average(part, ["all"]).cell("all")}  # noqa: E731
        out += _per_dataset(runs, "few_shot", per_dataset, average)
    return out


def _within(difference: float, cell: Cell, k: float):
    if cell.n_seeds < 2 or math.isnan(cell.std):
        return pd.NA
    return bool(abs(difference) <= k * cell.std)


def reproduction_gap(runs: pd.DataFrame, published: Published, k: float = SPREAD_K) -> Gap:
    """The gap table of the runs (``collect.load_runs``) against the published numbers; see the module docstring."""
    numbers = published_numbers(published)
    by_key = {key: part for key, part in numbers.groupby(["protocol", "dataset", "shots", "metric", "trained_on"])}
    records, left_out, other_datasets = [], 0, 0
    for ours in our_numbers(runs):
        keys = _match_keys(ours.method, ours.base_method, ours.weight)
        compared = covers_differ = False
        for metric, cell in ours.cells.items():
            candidates = by_key.get((ours.protocol, ours.dataset, ours.shots, metric, ours.trained_on))
            if candidates is None or math.isnan(cell.mean):
                continue
            for pub in candidates[candidates["key"].isin(keys)].itertuples():
                if ours.dataset == AVERAGE and pub.covers != ours.covers:
                    covers_differ = True
                    continue
                difference = cell.mean - pub.published
                records.append(
                    {
                        "protocol": ours.protocol,
                        "method": ours.method,
                        "name": ours.name,
                        "dataset": ours.dataset,
                        "shots": ours.shots,
                        "metric": metric,
                        "ours_mean": cell.mean,
                        "ours_std": cell.std,
                        "n_seeds": cell.n_seeds,
                        "published": pub.published,
                        "difference": difference,
                        "spread_limit": k * cell.std,
                        "within_spread": _within(difference, cell, k),
                        "published_method": pub.published_method,
                        "source": pub.source,
                        "_order": (
                            list(PROTOCOL_NAMES).index(ours.protocol),
                            method_order(ours.method, ours.base_method, ours.weight),
                            (math.inf, "") if ours.dataset == AVERAGE else dataset_order(ours.dataset),
                            ours.shots,
                            list(METRICS).index(metric),
                            pub.published_method,
                        ),
                    }
                )
                compared = True
        if not compared:
            other_datasets += int(covers_differ)
            left_out += int(not covers_differ)
    records.sort(key=lambda r: r["_order"])
    frame = pd.DataFrame(records, columns=COLUMNS)  # without _order
    frame = frame.astype({"within_spread": "boolean", "n_seeds": "Int64", "shots": "Int64"})
    backbones = sorted(set(runs["backbone"])) if "backbone" in runs else []
    return Gap(frame, left_out, other_datasets, len(numbers), backbones[0] if backbones else None, k)


# ---------------------------------------------------------------- writing


def _caption(gap: Gap) -> list[str]:
    """Plain text sentences (LaTeX-escaped by the LaTeX writer)."""
    k = f"{gap.k:g}"
    parts = [
        "Reproduction gap: our accuracy (%), mean ± std over seeds, beside the published number; "
        "Diff. = ours - published."
    ]
    parts.append(
        f"Within {k} std: the absolute difference is at most {k} times our standard deviation over "
        f"seeds (sample std, ddof=1, the ± shown; for an average, over the seeds' dataset averages); "
        f"n/a with fewer than two seeds."
    )
    if gap.frame.empty:
        parts.append(
            "No published numbers were read (no published folder was given), so nothing is compared."
            if gap.n_published == 0
            else "None of the published numbers matches a method, dataset and shot count of these runs."
        )
    else:
        parts.append(
            "A published average covers the benchmark's datasets (11 for base-to-novel and few-shot, the 10 "
            "cross-dataset targets, the 4 ImageNet variants) and is compared only with an average of ours "
            "over the same datasets; HM of avg. is the harmonic mean of the average base and novel "
            "accuracies, HM per dataset that dataset's HM."
        )
    parts.append(gap.left_out_sentence().replace("left out", "Left out:", 1) + ".")
    if gap.backbone and not gap.frame.empty:
        parts.append(
            f"Our backbone: {gap.backbone}; the published numbers are CLIP ViT-B/16, 16 shots per class "
            f"unless the row says otherwise."
        )
    return parts


def _sources(gap: Gap) -> str:
    sources: dict[str, list[str]] = {}
    for method, source in gap.frame[["published_method", "source"]].drop_duplicates().itertuples(index=False):
        sources.setdefault(source or "source not given", []).append(method)
    return "; ".join(f"{', '.join(methods)} from {source}" for source, methods in sources.items())


def _display(gap: Gap, latex: bool) -> pd.DataFrame:
    """The table as strings: method, protocol, dataset, metric, ours, published, difference, within spread."""
    esc = _latex_text if latex else (lambda s: s)
    rows = []
    for r in gap.frame.itertuples(index=False):
        protocol = PROTOCOL_NAMES[r.protocol] + (f", {r.shots} shots" if r.protocol == "few_shot" else "")
        transfer = r.protocol in ("cross_dataset", "domain_generalization")
        if r.dataset == AVERAGE:
            dataset = "Target avg." if transfer else "Average"
        else:
            dataset = dataset_name(r.dataset) + (" (source)" if transfer and r.dataset == TRANSFER_SOURCE else "")
        metric = "HM of avg." if r.metric == "hm" and r.dataset == AVERAGE else METRICS[r.metric]
        name = esc(r.name)
        ours = format_cell(Cell(r.ours_mean, r.ours_std, r.n_seeds), latex=latex)
        difference = f"${r.difference:+.{DECIMALS}f}$" if latex else f"{r.difference:+.{DECIMALS}f}"
        within = "n/a" if pd.isna(r.within_spread) else ("yes" if r.within_spread else "no")
        rows.append(
            [name, esc(protocol), esc(dataset), esc(metric), ours, f"{r.published:.{DECIMALS}f}", difference, within]
        )
    header = ["Method", "Protocol", "Dataset", "Metric", "Ours", "Published", "Diff.", f"Within {gap.k:g} std"]
    if latex:
        header = [_latex_text(h) for h in header]
    return pd.DataFrame(rows, columns=header)


def caption_text(gap: Gap, latex: bool) -> str:
    esc = _latex_text if latex else (lambda s: s)
    parts = [esc(p) for p in _caption(gap)]
    if not gap.frame.empty:
        parts.append(esc(f"Published numbers are quoted from other projects, not run here. Sources: {_sources(gap)}."))
    return " ".join(parts)


def to_latex(gap: Gap) -> str:
    """A booktabs longtable (pandas Styler); with no rows, the caption as a paragraph (no empty table)."""
    head = "% generated by `python -m prompt_ot report`; needs \\usepackage{booktabs,longtable}\n"
    if gap.frame.empty:
        return head + f"\\paragraph{{Reproduction gap.}} {caption_text(gap, latex=True)}\n"
    frame = _display(gap, latex=True)
    tabular = frame.style.hide(axis="index").to_latex(
        hrules=True,
        environment="longtable",
        column_format="llll" + "r" * 3 + "c",
        caption=caption_text(gap, latex=True),
        label=f"tab:{NAME}",
    )
    # eight columns of text: a smaller font and narrower gaps keep a longtable (never scaled) within the line
    return head + "{\\footnotesize\\setlength{\\tabcolsep}{4pt}\n" + tabular + "}\n"


def to_csv(gap: Gap) -> str:
    """Full precision; ``within_spread`` True/False, empty where n/a."""
    return gap.frame.to_csv(index=False)


def to_markdown(gap: Gap) -> str:
    if gap.frame.empty:
        return f"**{NAME}**: {caption_text(gap, latex=False)}\n"
    frame = _display(gap, latex=False)
    lines = ["| " + " | ".join(map(_md, frame.columns)) + " |", "|" + "|".join([":--"] * 4 + ["--:"] * 4) + "|"]
    lines += ["| " + " | ".join(map(_md, values)) + " |" for values in frame.itertuples(index=False)]
    return f"**{NAME}**: {caption_text(gap, latex=False)}\n\n" + "\n".join(lines) + "\n"


def files(gap: Gap) -> list[tuple[str, str]]:
    """(file name, text) of the three outputs, as ``build_report`` writes them."""
    return [(f"{NAME}.tex", to_latex(gap)), (f"{NAME}.csv", to_csv(gap)), (f"{NAME}.md", to_markdown(gap))]
