"""Adaptive regularisation strength: lambda set by constrained training instead of fixed by hand.

Prompt-OT minimises CE + lambda * L_OT with a fixed lambda. The adaptive option reads the regulariser as a
constraint instead, minimise CE subject to L_OT <= epsilon, and treats lambda as its Lagrange multiplier,
updated after every optimiser step by projected dual ascent on the step's (detached) OT term::

    lambda <- clip(lambda + step * (L_OT - epsilon), 0, max_weight)

so lambda grows while the term is above the budget and shrinks towards 0 while it is below. ``epsilon`` is
``budget`` itself (``relative: false``), or ``budget`` times the mean OT term of the run's first epoch
(``relative: true``, the default); a relative budget is unknown during the first epoch, so lambda keeps its
initial value (the regulariser's ``weight``) until that epoch ends. ``step`` is ``dual_lr`` for an absolute
budget and ``dual_lr`` divided by the first epoch's mean term for a relative one, so that with a relative
budget ``dual_lr`` is the change of lambda per step for a violation of 100% of the reference, whatever the
backbone's scale of costs.

Lambda, the reference and the running sums are 0-dim float64 tensors on the training device: a step updates
them with device operations only (no host read); the trainer reads them once per epoch, with its other sums.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from prompt_ot.errors import UserError

# The defaults of ``adaptive: {}`` (each key may be given alone).
DEFAULT_BUDGET = 1.0  # relative: keep L_OT at or below its first-epoch mean
DEFAULT_RELATIVE = True
DEFAULT_DUAL_LR = 0.2
DEFAULT_MAX_WEIGHT = 100.0  # ten times the paper's lambda


@dataclass(frozen=True)
class AdaptiveSettings:
    budget: float = DEFAULT_BUDGET
    relative: bool = DEFAULT_RELATIVE
    dual_lr: float = DEFAULT_DUAL_LR
    max_weight: float = DEFAULT_MAX_WEIGHT

    def to_dict(self) -> dict:
        return asdict(self)


KEYS = tuple(AdaptiveSettings.__dataclass_fields__)


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"regulariser parameter 'adaptive.{key}' must be a finite number, got {value!r}")
    return float(value)


def check_adaptive(spec, initial: float) -> AdaptiveSettings | None:
    """The settings of an ``adaptive`` block (None or false: a fixed lambda), or a UserError naming the key.

    ``initial`` is the regulariser's ``weight``, lambda's starting value, which must lie within [0, max_weight].
    ``adaptive: true`` or ``adaptive: {}`` takes every default.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {}
    if not isinstance(spec, dict):
        raise UserError(
            f"regulariser parameter 'adaptive' must be a mapping of {', '.join(KEYS)} (or true for the "
            f"defaults, null for a fixed lambda), got {spec!r}"
        )
    unknown = sorted(str(k) for k in spec if k not in KEYS)
    if unknown:
        raise UserError(
            f"unknown regulariser parameter(s) {', '.join('adaptive.' + k for k in unknown)}; "
            f"known: {', '.join('adaptive.' + k for k in KEYS)}"
        )
    values = {}
    for key in ("budget", "dual_lr", "max_weight"):
        if key in spec:
            values[key] = _number(key, spec[key])
    if "relative" in spec:
        if not isinstance(spec["relative"], bool):
            raise UserError(
                f"regulariser parameter 'adaptive.relative' must be true or false, got {spec['relative']!r}"
            )
        values["relative"] = spec["relative"]
    settings = AdaptiveSettings(**values)
    if settings.budget < 0:
        raise UserError(f"regulariser parameter 'adaptive.budget' must be >= 0, got {spec['budget']!r}")
    if not settings.dual_lr > 0:
        raise UserError(f"regulariser parameter 'adaptive.dual_lr' must be > 0, got {spec['dual_lr']!r}")
    if not settings.max_weight > 0:
        raise UserError(f"regulariser parameter 'adaptive.max_weight' must be > 0, got {spec['max_weight']!r}")
    if settings.max_weight < initial:
        raise UserError(
            f"regulariser parameter 'adaptive.max_weight' = {settings.max_weight:g} is below the initial "
            f"lambda 'weight' = {initial:g}; raise max_weight or lower weight"
        )
    return settings


class DualWeight(nn.Module):
    """Lambda as device state, updated by projected dual ascent (see the module's docstring).

    Per step: the regulariser calls :meth:`observe` with its unweighted term and weighs the term by
    :attr:`value` (the lambda before the update); the trainer calls :meth:`step` after the optimiser step and
    :meth:`end_epoch` at the epoch boundary. :meth:`state` / :meth:`load_state` are what a checkpoint keeps.
    """

    def __init__(self, settings: AdaptiveSettings, initial: float):
        super().__init__()
        self.settings = settings
        self.initial = float(initial)
        self.register_buffer("value", torch.tensor(self.initial, dtype=torch.float64))
        self.register_buffer("reference", None)  # the first epoch's mean term (relative budgets), once known
        self.register_buffer("epoch_sum", torch.zeros((), dtype=torch.float64))
        self.epoch_steps = 0
        self.pending: Tensor | None = None

    @property
    def calibrating(self) -> bool:
        """True while a relative budget waits for the end of the first epoch (lambda stays at its initial value)."""
        return self.settings.relative and self.reference is None

    def budget(self) -> Tensor | float | None:
        """Epsilon: a float (absolute), a 0-dim device tensor (relative, once known), or None (not yet known)."""
        if not self.settings.relative:
            return self.settings.budget
        return None if self.reference is None else self.settings.budget * self.reference

    def observe(self, term: Tensor) -> None:
        """Record the step's unweighted OT term (detached) for the update after the optimiser step."""
        self.pending = term.detach().to(torch.float64)

    def step(self) -> None:
        """The dual update with the observed term: device operations only."""
        term, self.pending = self.pending, None
        if term is None:
            return
        with torch.no_grad():
            if self.calibrating:
                self.epoch_sum = self.epoch_sum + term
                self.epoch_steps += 1
                return
            rate = self.settings.dual_lr
            if self.settings.relative:
                rate = rate / self.reference.clamp_min(1e-12)
            # out of place: the step's loss holds the old lambda for its backward
            self.value = torch.clamp(self.value + rate * (term - self.budget()), 0.0, self.settings.max_weight)

    def end_epoch(self) -> None:
        """After the first epoch of a relative budget: the reference is that epoch's mean term (on the device)."""
        if self.calibrating and self.epoch_steps:
            self.reference = self.epoch_sum / self.epoch_steps
        self.epoch_sum = torch.zeros_like(self.epoch_sum)
        self.epoch_steps = 0

    def state(self) -> dict[str, Tensor]:
        tensors = {"lambda": self.value.detach()}
        if self.reference is not None:
            tensors["reference"] = self.reference.detach()
        return tensors

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        if "lambda" not in tensors:
            raise UserError("the checkpoint of this adaptive-lambda run holds no lambda; delete it to restart the run")
        device = self.value.device
        self.value = tensors["lambda"].to(device, torch.float64)
        self.reference = tensors["reference"].to(device, torch.float64) if "reference" in tensors else None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.to_dict().items()) + f", initial={self.initial}"
