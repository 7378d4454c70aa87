"""Every run's numbers in long form (``tables/runs.csv``) and the runs that look wrong (``tables/suspect_runs.md``).

A run is suspect when (each rule stated once, here and in the file's header):

- its training loss is not finite in some epoch, or its cross-entropy rose: the last epoch's mean above the first
  epoch's (the cross-entropy, not the total loss, since a regularised run's penalty starts at 0 and may grow);
- it lies far outside its sibling seeds (the other seeds of the same protocol, method, dataset and shots, three or
  more in all): its headline metric is more than max(3 x 1.4826 x MAD, 10 points) from their median, where MAD is
  the median absolute deviation from the median of all the seeds' values (a robust z-score above 3, with a floor
  that the few test images of a small dataset make necessary);
- a test accuracy is at chance: a one-sided binomial test does not find it above 1/C (C classes of that test set)
  at the 1% level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.report.paired import headline, read_predictions, scored_keys

OUTLIER_K = 3.0
MAD_SCALE = 1.4826  # MAD of a normal sample x 1.4826 estimates its standard deviation
OUTLIER_FLOOR = 10.0  # accuracy points
CHANCE_LEVEL = 0.01
TRAINS = ("base2novel", "cross_dataset", "few_shot")  # the protocols whose run folders hold a training record
SUSPECT_NAME = "suspect_runs"


def headline_of(run) -> float:
    """A run's headline number, as the tables and the paired statistics define it (:func:`paired.headline`): HM
    (base-to-novel), its accuracy (few-shot), its target average (transfer; NaN without targets)."""
    accuracy = run["accuracy"]
    keys = scored_keys(run["protocol"], run["dataset"], accuracy)
    if not keys:
        return math.nan
    return headline(run["protocol"], {run["dataset"]: {k: accuracy[k] for k in keys}})


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric): the long form of every run's numbers, for any other test."""
    rows = []
    for _, run in runs.iterrows():
        common = {
            "protocol": run["protocol"],
            "method": run["method"],
            "base_method": run["base_method"],
            "dataset": run["dataset"],
            "shots": run["shots"],
            "seed": run["seed"],
        }
        tail = {
            "recipe": run["recipe"],
            "tested_epoch": run["tested_epoch"],
            "epochs": run["epochs"],
            "weight": run["weight"],
            "path": run["path"],
        }
        counts = run.get("n") or {}
        accuracy = run["accuracy"]
        if run["protocol"] == "base2novel":
            items = [("base", run["dataset"], "base"), ("novel", run["dataset"], "novel"), ("hm", run["dataset"], None)]
        elif run["protocol"] == "few_shot":
            items = [("accuracy", run["dataset"], "all")]
        else:
            items = [("accuracy", key, key) for key in accuracy] + [("target_average", "targets", None)]
        for metric, on, key in items:
            value = headline_of(run) if metric in ("hm", "target_average") else accuracy[key]
            n = counts.get(key) if key is not None else None
            rows.append(common | {"evaluated_on": on, "metric": metric, "value": value, "n_images": n} | tail)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["n_images"] = frame["n_images"].astype("Int64")
    return frame


@dataclass(frozen=True)
class Suspect:
    protocol: str
    method: str
    dataset: str
    shots: int
    seed: int
    reason: str

    def line(self) -> str:
        return f"{self.protocol} {self.method} on {self.dataset} ({self.shots} shots) seed {self.seed}: {self.reason}"


def _training_reasons(path: Path) -> list[str]:
    record = path.with_name("train.json")
    if not record.is_file():
        return []
    try:
        history = json.loads(record.read_text()).get("history") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return [f"its training record {record} cannot be read"]
    reasons = []
    for epoch in history:
        values = [epoch.get(k) for k in ("loss", "ce", "regulariser")]
        if any(isinstance(v, (int, float)) and not math.isfinite(v) for v in values):
            reasons.append(f"non-finite training loss in epoch {epoch.get('epoch')}")
            break
    if len(history) >= 2 and not reasons:
        first, last = history[0].get("ce"), history[-1].get("ce")
        if isinstance(first, (int, float)) and isinstance(last, (int, float)) and last > first:
            reasons.append(
                f"training cross-entropy rose from {first:.4g} (epoch {history[0].get('epoch')}) to {last:.4g} "
                f"(epoch {history[-1].get('epoch')})"
            )
    return reasons


def _outliers(runs: pd.DataFrame) -> dict[int, str]:
    reasons = {}
    values = runs.apply(headline_of, axis=1) if len(runs) else pd.Series(dtype=float)
    for _, group in runs.groupby(["protocol", "method", "dataset", "shots"], sort=False):
        if len(group) < 3:
            continue
        x = values[group.index]
        median = float(x.median())
        mad = float((x - median).abs().median())
        limit = max(OUTLIER_K * MAD_SCALE * mad, OUTLIER_FLOOR)
        for index, value in x.items():
            if abs(value - median) > limit:
                others = ", ".join(f"{v:.2f}" for i, v in x.items() if i != index)
                reasons[index] = (
                    f"headline {value:.2f} is {abs(value - median):.2f} points from its seeds' median {median:.2f} "
                    f"(limit {limit:.2f}; sibling seeds {others})"
                )
    return reasons


def _chance_reasons(path: Path, accuracy: dict) -> list[str]:
    from scipy.stats import binomtest

    try:
        scored = read_predictions(path)
    except UserError:  # missing or unreadable: the paired statistics name the file
        return []
    reasons = []
    for key, test_set in sorted(scored.items()):
        y = test_set.labels
        classes, n = len(np.unique(y)), len(y)
        if key not in accuracy or classes < 2 or n == 0:
            continue
        right = round(accuracy[key] * n / 100)
        if binomtest(right, n, 1 / classes, alternative="greater").pvalue >= CHANCE_LEVEL:
            reasons.append(
                f"{key} accuracy {accuracy[key]:.2f}% is at chance ({100 / classes:.2f}% for {classes} classes)"
            )
    return reasons


def suspect_runs(runs: pd.DataFrame) -> list[Suspect]:
    """Every suspect run with its reasons, in the runs' order."""
    outliers = _outliers(runs)
    found = []
    for index, run in runs.iterrows():
        path = Path(run["path"])
        reasons = _training_reasons(path) if run["protocol"] in TRAINS else []
        reasons += [outliers[index]] if index in outliers else []
        reasons += _chance_reasons(path, run["accuracy"])
        key = (run["protocol"], run["method"], run["dataset"], int(run["shots"]), int(run["seed"]))
        found += [Suspect(*key, reason) for reason in reasons]
    return found


def suspect_markdown(suspects: list[Suspect], n_runs: int) -> str:
    rules = __doc__.split("A run is suspect when", 1)[1].strip()
    lines = [
        "# Suspect runs",
        "",
        f"Written by `python -m prompt_ot report` from {n_runs} runs. A run is suspect when {rules}",
        "",
    ]
    if not suspects:
        return "\n".join(lines + ["No run is suspect.", ""])
    lines += ["| Protocol | Method | Dataset | Shots | Seed | Reason |", "|:--|:--|:--|--:|--:|:--|"]
    for s in suspects:
        reason = s.reason.replace("|", r"\|")
        lines.append(f"| {s.protocol} | {s.method} | {s.dataset} | {s.shots} | {s.seed} | {reason} |")
    return "\n".join(lines) + "\n"
