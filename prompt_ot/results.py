"""The per-run metrics file: what the evaluate stage writes and the report and tracking layers read.

One JSON file per (protocol, method, training dataset, shots, seed) evaluation::

    {"format": "prompt_ot.metrics/1", "protocol": "base2novel", "method": "prompt_ot",
     "dataset": "caltech101", "seed": 1, "shots": 16, "backbone": "ViT-B-16-quickgelu",
     "pretrained": "openai", "epoch": 40,
     "accuracy": {"base": 97.9, "novel": 94.1},   # percent, full precision
     "n": {"base": 1549, "novel": 916},
     "hm": 95.96,                                  # base2novel only: 2BN/(B+N)
     "base_method": "prompt_ot", "regulariser_weight": 10.0,  # for variants (e.g. a lambda sweep)
     "regulariser_adaptive": true,  # only for an adaptive lambda: then the weight is lambda after the tested epoch
     "recipe": "released", "epochs": 40, "precision": "fp16",  # epoch < epochs: tested before the last epoch
     "provenance": {...},     # what produced the prompts (prompt_ot.provenance)
     "recipe_values": {...},  # every resolved value of the recipe in force
     "class_metrics": {"base": {"per_class_accuracy": {"<class>": 98.0, ...},
                                "balanced_accuracy": 97.6, "macro_f1": 97.5}, ...}}  # every evaluated subset

Protocols and their ``accuracy`` keys: ``base2novel`` -> base, novel; ``cross_dataset`` and
``domain_generalization`` -> one key per evaluated dataset (the source included); ``few_shot`` -> all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prompt_ot.errors import UserError

FORMAT = "prompt_ot.metrics/1"
PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")


@dataclass
class RunMetrics:
    protocol: str
    method: str
    dataset: str
    seed: int
    shots: int
    backbone: str
    accuracy: dict[str, float]
    n: dict[str, int] = field(default_factory=dict)
    pretrained: str | None = None
    epoch: int | None = None
    hm: float | None = None
    base_method: str | None = None  # the registry method a variant derives from (equals method otherwise)
    regulariser_weight: float | None = None  # lambda of the regulariser, None without one
    regulariser_adaptive: bool = False  # lambda adapted while training (regulariser_weight: its tested-epoch value)
    recipe: str | None = None  # "released" | "shared" (None: written before recipes existed)
    epochs: int | None = None  # epochs the run trained; ``epoch`` is the one tested
    precision: str | None = None
    provenance: dict = field(default_factory=dict)
    recipe_values: dict = field(default_factory=dict)
    # accuracy key -> {"per_class_accuracy": {class name: %}, "balanced_accuracy": %, "macro_f1": %}
    class_metrics: dict = field(default_factory=dict)

    def to_json(self) -> str:
        payload = {"format": FORMAT, **asdict(self)}
        if payload["hm"] is None:
            del payload["hm"]
        if not payload["regulariser_adaptive"]:  # written only when true: fixed-lambda files stay as they were
            del payload["regulariser_adaptive"]
        return json.dumps(payload, indent=2, sort_keys=False) + "\n"


def write_metrics(path: str | Path, metrics: RunMetrics) -> None:
    from prompt_ot.utils.io import atomic_write_text

    if metrics.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {metrics.protocol}")
    atomic_write_text(path, metrics.to_json())


def read_metrics(path: str | Path) -> RunMetrics:
    from prompt_ot.utils.io import read_json

    path = Path(path)
    raw = read_json(
        path,
        what="metrics file",
        fix="delete it and rerun the evaluate stage",
        missing=f"metrics file {path} does not exist; run the evaluate stage first",
    )
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a prompt_ot metrics file (format {FORMAT!r} expected)")
    raw.pop("format")
    try:
        metrics = RunMetrics(**raw)
    except TypeError as err:
        raise UserError(f"metrics file {path} has unexpected fields ({err}); rerun the evaluate stage") from err
    if metrics.protocol not in PROTOCOLS or not all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.accuracy.values()
    ):
        raise UserError(f"metrics file {path} has an unknown protocol or non-numeric accuracies")
    return metrics
