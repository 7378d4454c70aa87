"""The regularisers' calling convention: a batch's features in, the weighted scalar out.

``Regulariser`` is the base class every regulariser derives from; ``RegulariserInputs`` is what the trainer hands
it each step; ``check_positive`` validates a numeric argument with a message naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from prompt_ot.errors import UserError


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
