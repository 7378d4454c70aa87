"""Per-class accuracy of one dataset (``tables/per_class_<dataset>.{md,csv,tex}``, report ``--per-class``).

One block of rows per place the dataset was tested (base-to-novel base and novel classes, each few-shot K, a
transfer protocol's target): a row per class, then balanced accuracy and macro-F1; a column per method; each cell
the mean over seeds of the runs' ``class_metrics`` (written by the evaluate stage).
"""

from __future__ import annotations

import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.report.names import PROTOCOL_NAMES, dataset_name, method_order
from prompt_ot.report.render import frame_files

SUMMARY_ROWS = {"balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro-F1"}


def _blocks(runs: pd.DataFrame, dataset: str):
    """(block label, run, class-metrics key) for every run that tested on ``dataset``."""
    for _, run in runs.iterrows():
        protocol, metrics = run["protocol"], run.get("class_metrics") or {}
        if protocol == "base2novel" and run["dataset"] == dataset:
            keys = [(f"{PROTOCOL_NAMES[protocol]}, {k} classes", k) for k in ("base", "novel")]
        elif protocol == "few_shot" and run["dataset"] == dataset:
            keys = [(f"{PROTOCOL_NAMES[protocol]}, {run['shots']} shots", "all")]
        elif protocol in ("cross_dataset", "domain_generalization"):
            source = " (source)" if run["dataset"] == dataset else f" (from {dataset_name(run['dataset'])})"
            keys = [(PROTOCOL_NAMES[protocol] + source, dataset)]
        else:
            keys = []
        for label, key in keys:
            if key in metrics:
                yield label, run, metrics[key]


def per_class_files(runs: pd.DataFrame, dataset: str) -> list[tuple[str, str]]:
    records = []
    for label, run, metrics in _blocks(runs, dataset):
        common = {"block": label, "method": run["method"], "seed": run["seed"]}
        for name, value in metrics.get("per_class_accuracy", {}).items():
            records.append(common | {"row": name, "value": value})
        records += [common | {"row": SUMMARY_ROWS[k], "value": metrics[k]} for k in SUMMARY_ROWS if k in metrics]
    if not records:
        raise UserError(
            f"--per-class {dataset}: no run holds per-class metrics of {dataset} (the evaluate stage writes them; "
            f"datasets tested here: {', '.join(sorted(set(runs['dataset'])))})"
        )
    long = pd.DataFrame(records)
    first = runs.drop_duplicates("method").set_index("method")
    methods = sorted(long["method"].unique(), key=lambda m: method_order(m, first.at[m, "base_method"]))
    order = pd.MultiIndex.from_tuples(list(dict.fromkeys(zip(long["block"], long["row"]))), names=["block", "row"])
    table = long.pivot_table(index=["block", "row"], columns="method", values="value", aggfunc="mean")
    table = table.reindex(index=order, columns=methods).reset_index()
    seeds = long.groupby("method")["seed"].nunique()
    display = table.copy()
    for method in methods:
        display[method] = table[method].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    display = display.rename(columns={"block": "Tested as", "row": "Class"})
    counts = ", ".join(f"{m} {seeds[m]}" for m in methods)
    caption = (
        f"Per-class accuracy (%) on {dataset_name(dataset)}, mean over seeds ({counts}"
        "), then balanced accuracy (the mean of the per-class accuracies) and macro-F1, for every place the dataset "
        "was tested."
    )
    full = long.rename(columns={"row": "class"})
    return frame_files(f"per_class_{dataset}", caption, display, full, 2)
