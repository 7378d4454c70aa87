"""The per-backbone table of a grid with a backbone axis: each protocol's headline number per method and backbone.

A params.yaml whose ``backbone`` is a list runs the grid once per backbone, each backbone's runs under
``<paths.runs>/<key>/`` (Snakemake). This table reads every backbone's metrics files and puts, per protocol and
method (and K for few-shot), the number the protocol's own table leads with side by side: the harmonic mean of the
dataset-averaged base and novel accuracy (base-to-novel), the target average (cross-dataset, domain
generalisation), the accuracy averaged over datasets (few-shot); each the mean over seeds as in those tables
(:func:`prompt_ot.report.paired.headline` of seed-averaged accuracies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prompt_ot.errors import UserError
from prompt_ot.report.collect import load_runs
from prompt_ot.report.names import method_name
from prompt_ot.report.paired import headline, scored_keys
from prompt_ot.report.render import frame_files

NAME = "per_backbone"
PROTOCOL_LABELS = {
    "base2novel": "Base-to-novel (HM)",
    "cross_dataset": "Cross-dataset (target avg.)",
    "domain_generalization": "Domain generalisation (target avg.)",
    "few_shot": "Few-shot (avg.)",
}


def backbone_runs(params: dict) -> dict[str, pd.DataFrame]:
    """Each backbone's runs of the grid (every metrics file must be there; a missing one is named)."""
    from prompt_ot.config import backbone_entries, evaluated_runs

    runs_root = Path(params["paths"]["runs"])
    frames = {}
    for key, entry in backbone_entries(params):
        folder = runs_root / key if key is not None else runs_root
        paths = [
            folder / protocol / method / f"{dataset}_{shots}shot" / f"seed{seed}" / "metrics.json"
            for protocol, method, dataset, shots, seed in evaluated_runs(params)
        ]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} metrics file(s) of backbone {key or entry['name']} are missing, e.g. {missing[0]}; "
                "run the grid first (snakemake), then this table"
            )
        frames[key or entry["name"]] = load_runs(paths)
    return frames


def per_backbone_frame(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long form: protocol, method, shots, backbone, value (the headline number), seeds."""
    rows = []
    for key, runs in frames.items():
        for (protocol, method, shots), group in runs.groupby(["protocol", "method", "shots"], sort=False):
            accuracy = {}
            for dataset, runs_of_dataset in group.groupby("dataset"):
                keys = scored_keys(protocol, dataset, runs_of_dataset.iloc[0]["accuracy"])
                accuracy[dataset] = {k: float(np.mean([a[k] for a in runs_of_dataset["accuracy"]])) for k in keys}
            if any(not keys for keys in accuracy.values()):
                continue  # a transfer run without targets has no headline number
            rows.append(
                {
                    "protocol": protocol,
                    "method": method,
                    "shots": int(shots),
                    "backbone": key,
                    "value": float(headline(protocol, accuracy)),
                    "seeds": int(group["seed"].nunique()),
                }
            )
    return pd.DataFrame(rows, columns=["protocol", "method", "shots", "backbone", "value", "seeds"])


def per_backbone_files(frames: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """(file name, text) of the table: one row per protocol, method (and K), one column per backbone."""
    long = per_backbone_frame(frames)
    if long.empty:
        raise UserError("the runs hold no headline numbers to compare across backbones")
    order = {p: i for i, p in enumerate(PROTOCOL_LABELS)}
    full = long.pivot_table(index=["protocol", "method", "shots"], columns="backbone", values="value", sort=False)
    full = full.reindex(columns=list(frames)).reset_index()
    full = full.sort_values(
        ["protocol", "shots"], key=lambda s: s.map(order) if s.name == "protocol" else s, kind="stable"
    )
    display = pd.DataFrame(
        {
            "Protocol": [
                PROTOCOL_LABELS[p] + (f", K={k}" if p == "few_shot" else "")
                for p, k in zip(full["protocol"], full["shots"])
            ],
            "Method": [method_name(m) for m in full["method"]],
        }
    )
    for key in frames:
        display[key] = [f"{v:.2f}" if np.isfinite(v) else "–" for v in full[key]]
    caption = (
        "Each protocol's headline number per backbone (columns), mean over seeds: HM of the dataset-averaged base and "
        "novel accuracy, target average, or few-shot accuracy averaged over datasets."
    )
    return frame_files(NAME, caption, display, full, text_columns=2)


def write_per_backbone(params: dict, out: str | Path) -> list[Path]:
    """Write the table's .tex, .md and .csv into ``out`` (each atomically)."""
    from prompt_ot.utils.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in per_backbone_files(backbone_runs(params)):
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
