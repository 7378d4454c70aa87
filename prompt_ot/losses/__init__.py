"""Regularisers that keep prompted CLIP features close to the frozen model's.

Prompt-OT's optimal-transport term (:mod:`prompt_ot.losses.ot`) and the point-wise baselines
(:mod:`prompt_ot.losses.pointwise`) share one calling convention, so the trainer treats them alike:
``regulariser(RegulariserInputs(...))`` returns the already weighted scalar that is added to the
cross-entropy. :func:`build_regulariser` turns a ``params.yaml`` spec into one, checking every name.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

from torch import Tensor, nn

from prompt_ot.errors import UserError, unknown_name


@dataclass
class RegulariserInputs:
    """One batch's features, all L2-normalised; ``image``/``frozen_image`` may be None when not needed."""

    image: Tensor | None  # (B, D) prompted image features f_i
    frozen_image: Tensor | None  # (B, D) frozen image features g_i of the same views
    class_text: Tensor  # (C, D) prompted text features T_c of every class
    frozen_class_text: Tensor  # (C, D) frozen features S_c of "a photo of a {c}."
    labels: Tensor  # (B,) int64 class of each image
    logits: Tensor | None = None  # (B, C) the prompted logits the cross-entropy reads
    logit_scale: Tensor | float | None = None  # exp(CLIP's logit scale), for zero-shot logits


class Regulariser(nn.Module):
    """Base class: ``forward(inputs) -> scalar`` (weighted); says whether it reads frozen image features."""

    needs_frozen_image: bool = False

    def forward(self, inputs: RegulariserInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step (an adaptive weight updates here); device work only."""


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """``value`` as a float, or a UserError naming the parameter when it is not a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"regulariser parameter {name!r} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"regulariser parameter {name!r} must be {bound}, got {value!r}")
    return float(value)


# The concrete regularisers import the base classes above, so they are imported after them.
from prompt_ot.losses.ot import (  # noqa: E402
    BACKENDS,
    MODALITIES,
    SOLVERS,
    OTRegulariser,
    assignment_plan,
    log_sinkhorn_plan,
    paired_features,
    transport_cost,
    transport_plan,
)
from prompt_ot.losses.adaptive import AdaptiveSettings, DualWeight, check_adaptive  # noqa: E402
from prompt_ot.losses.pointwise import KgCoOpLoss, PointwiseL1, PromptSRCLoss  # noqa: E402

REGULARISERS: dict[str, type[Regulariser]] = {
    "ot": OTRegulariser,
    "pointwise_l1": PointwiseL1,
    "kgcoop": KgCoOpLoss,
    "promptsrc": PromptSRCLoss,
}


def build_regulariser(spec: dict | None) -> Regulariser | None:
    """The regulariser a config asks for, e.g. ``{"kind": "ot", "solver": "exact", "weight": 10.0}``.

    ``None`` means no regulariser (CoOp, IVLP). Every other key is a constructor argument; an
    unknown kind or key, or a bad value, raises UserError saying which one and what is allowed.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise UserError(f"a regulariser spec must be a mapping with a 'kind', got {spec!r}")
    if "kind" not in spec:
        raise UserError(f"regulariser spec {spec!r} has no 'kind'; known kinds: {', '.join(sorted(REGULARISERS))}")
    kind = spec["kind"]
    if kind not in REGULARISERS:
        raise unknown_name("regulariser kind", str(kind), REGULARISERS)
    cls = REGULARISERS[kind]
    known = [name for name in inspect.signature(cls).parameters]
    params = {key: value for key, value in spec.items() if key != "kind"}
    for key in params:
        if key not in known:
            raise unknown_name(f"{kind} regulariser parameter", str(key), known)
    return cls(**params)


__all__ = [
    "AdaptiveSettings",
    "BACKENDS",
    "DualWeight",
    "MODALITIES",
    "REGULARISERS",
    "SOLVERS",
    "KgCoOpLoss",
    "OTRegulariser",
    "PointwiseL1",
    "PromptSRCLoss",
    "Regulariser",
    "assignment_plan",
    "log_sinkhorn_plan",
    "RegulariserInputs",
    "build_regulariser",
    "check_adaptive",
    "check_positive",
    "paired_features",
    "transport_cost",
    "transport_plan",
]
