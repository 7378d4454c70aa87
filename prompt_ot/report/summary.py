"""``reports/metrics.json``: the report's headline numbers in one small file, for `dvc metrics show/diff` and
`dvc exp show` (dvc.yaml declares it as the report stage's metrics)::

    {"base2novel": {"prompt_ot": {"base": 94.09, "novel": 95.68, "hm": 94.88, "avg_of_hm": 94.83}, ...},
     "cross_dataset": {"imagenet": {"prompt_ot": {"source": 71.2, "target_avg": 65.3}, ...}},
     "domain_generalization": {"imagenet": {"prompt_ot": {"source": 71.2, "target_avg": 60.1}, ...}},
     "few_shot": {"prompt_ot": {"1shot": 70.1, "16shot": 80.2}, ...}}

Means over seeds of the tables' rows of this suite (published rows are left out), at full precision: ``hm`` is the HM
of the average base and novel accuracies, ``avg_of_hm`` the average of the per-dataset HMs; cross-dataset and
domain-generalisation rows are per source dataset. A protocol without runs is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

NAME = "metrics.json"
_TABLES = {
    "base2novel_average": "base2novel",
    "cross_dataset": "cross_dataset",
    "domain_generalization": "domain_generalization",
    "few_shot": "few_shot",
}
_KEYS = {
    "base2novel": {"base": "base", "novel": "novel", "hm_of_avg": "hm", "avg_of_hm": "avg_of_hm"},
    "cross_dataset": {"source": "source", "target_avg": "target_avg"},
    "domain_generalization": {"source": "source", "target_avg": "target_avg"},
}


def summary(tables) -> dict:
    """{protocol: {method: {metric: mean}}} (transfer protocols: {protocol: {source: {method: ...}}})."""
    out: dict = {}
    for table in tables:
        protocol = _TABLES.get(table.name)
        if protocol is None:
            continue
        keys = _KEYS.get(protocol) or {column: f"{column}shot" for column in table.columns}
        for row in table.rows:
            if row.published:
                continue
            values = {
                name: row.cells[column].mean
                for column, name in keys.items()
                if column in row.cells and not math.isnan(row.cells[column].mean)
            }
            if not values:
                continue
            into = out.setdefault(protocol, {})
            if protocol in ("cross_dataset", "domain_generalization"):
                into = into.setdefault(row.extra.get("source_dataset", "source"), {})
            into[row.key] = values
    return out


def write_summary(tables, out_dir: str | Path) -> Path:
    """Write ``out_dir/metrics.json`` (replaced atomically) and return its path."""
    from prompt_ot.utils.io import atomic_write_text

    path = Path(out_dir) / NAME
    atomic_write_text(path, json.dumps(summary(tables), indent=1, sort_keys=True) + "\n")
    return path
