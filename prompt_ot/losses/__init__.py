"""Regularisers that keep prompted CLIP features close to the frozen model's.

Prompt-OT's optimal-transport term (:mod:`prompt_ot.losses.ot`) and the point-wise baselines
(:mod:`prompt_ot.losses.pointwise`) share one calling convention, so the trainer treats them alike:
``regulariser(RegulariserInputs(...))`` returns the already weighted scalar that is added to the
cross-entropy. :func:`build_regulariser` turns a ``params.yaml`` spec into one, checking every name.
"""

from __future__ import annotations

import inspect

from prompt_ot.errors import UserError, unknown_name
from prompt_ot.losses.adaptive import AdaptiveSettings, DualWeight, check_adaptive
from prompt_ot.losses.base import Regulariser, RegulariserInputs, check_positive
from prompt_ot.losses.ot import (
    BACKENDS,
    MODALITIES,
    PLANS,
    SOLVERS,
    OTRegulariser,
    assignment_plan,
    control_plan,
    log_sinkhorn_plan,
    paired_features,
    transport_cost,
    transport_plan,
)
from prompt_ot.losses.pointwise import KgCoOpLoss, PointwiseL1, PromptSRCLoss

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
    "PLANS",
    "REGULARISERS",
    "SOLVERS",
    "KgCoOpLoss",
    "OTRegulariser",
    "PointwiseL1",
    "PromptSRCLoss",
    "Regulariser",
    "assignment_plan",
    "control_plan",
    "log_sinkhorn_plan",
    "RegulariserInputs",
    "build_regulariser",
    "check_adaptive",
    "check_positive",
    "paired_features",
    "transport_cost",
    "transport_plan",
]
