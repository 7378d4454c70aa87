"""Prompt-OT's regulariser: optimal transport between fine-tuned and pre-trained features of a batch.

Per batch, the fine-tuned rows u_i = [f_i ; T_{y_i}] are matched to the pre-trained rows
v_j = [g_j ; S_{y_j}] (or only the image or only the text halves) under the cost
C_ij = eta * ||u_i - v_j||^2, with uniform marginals 1/B. Unlike a point-wise constraint, a feature
is free to move as long as the batch as a whole still covers the pre-trained features.

The plan P is solved on a detached float64 copy of C and treated as a constant, so L = sum_ij P_ij C_ij
has gradient
sum_ij P_ij dC_ij. For the exact solver that is the true gradient wherever the optimal plan is
unique (envelope theorem); for the entropic solvers it is the gradient of the entropic OT value
(whose entropy term does not depend on C at a fixed plan), not the derivative of sum P(C) C through
the solver's iterations that ``ot.sinkhorn2`` autodiff gives.

Two backends solve the plan. ``pot`` copies C to the CPU and calls POT (network simplex, log-domain
Sinkhorn, unbalanced Sinkhorn), which waits for the GPU. ``torch`` solves on C's own device with no host
synchronisation, so a GPU training step stays one stream of work: the exact plan of a square batch with
uniform marginals is a permutation matrix / B (Birkhoff), found by scoring all B! assignments at once
(B <= 8, the paper's batch of 4 has 24); the entropic plans run a fixed number of log-domain Sinkhorn
iterations (no convergence test, which would need the host). ``auto`` (the default) is ``torch`` for a
cost on an accelerator and, on the CPU, for the exact plans it enumerates (the same plan as POT's whenever
the optimum is unique, and it spares a CPU job POT's import); entropic plans on the CPU go to POT, which
iterates to convergence. An exact plan the torch backend cannot enumerate (B > 8 or a non-square batch) is
solved by POT.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import torch
from torch import Tensor

from prompt_ot.errors import UserError, unknown_name
from prompt_ot.losses.adaptive import DualWeight, check_adaptive
from prompt_ot.losses.base import Regulariser, RegulariserInputs, check_positive

MODALITIES = ("joint", "vision", "text")
SOLVERS = ("exact", "sinkhorn", "unbalanced")
# The plan weighting the cost: the solver's optimal one (Prompt-OT), or a control on the same cost and lambda that
# asks whether the optimal plan matters: ``identity`` couples each prompted feature with its own frozen feature
# (P = I / B: the point-wise constraint on the OT cost) and ``uniform`` weights every pair 1 / (B B') (matching
# the batch means: sum_ij C_ij / (B B') = eta (||mean u - mean v||^2 + the spreads about the means)).
PLANS = ("optimal", "identity", "uniform")
BACKENDS = ("auto", "pot", "torch")
# The torch backend's exact solver scores every assignment: B! rows of B (8! = 40320 at most).
MAX_ENUMERATED_BATCH = 8
# Log-domain Sinkhorn iterations of the torch backend. On joint features (costs in [0, ~4], reg 0.1) the
# plan is within 3e-4 (x B) and the loss within 1e-4 (relative) of POT's converged ones after 300 (near ties
# converge slowest); see tests/test_losses.py.
DEFAULT_DEVICE_ITERATIONS = 300

# Entropic regularisation, in cost units. With unit features and eta = 0.5, costs lie in [0, 2] per
# modality ([0, 4] joint) and unrelated images cost about 1 (joint), so 0.1 keeps the plan close to
# a matching while spreading mass among near ties. Smaller values are safe from underflow for the
# log-domain Sinkhorn but need more iterations (POT warns when max_iterations runs out). The
# unbalanced solver works in the scaling domain and needs reg above about max(cost) / 400 (0.01
# joint), or exp(-cost/reg) underflows; that failure is reported as a UserError.
DEFAULT_REG = 0.1
# KL weight on the marginals of unbalanced OT; larger values approach the balanced plan.
DEFAULT_REG_M = 1.0
# POT's stopping threshold: the marginals' error (sinkhorn) or the relative change of the scalings
# (unbalanced). Plans are solved in float64; 1e-6 is already below what float32 features resolve,
# and POT's 1e-9 default would cost many more iterations.
DEFAULT_STOP_THRESHOLD = 1e-6
DEFAULT_MAX_ITERATIONS = 10_000


def control_plan(cost: Tensor, plan: str) -> Tensor:
    """A fixed plan with uniform marginals for ``cost`` (..., n, m): ``identity`` (I / n; square costs only) or
    ``uniform`` (every entry 1 / (n m)); in the cost's dtype and device, with no gradient."""
    n_rows, n_cols = cost.shape[-2:]
    if plan == "uniform":
        return torch.full_like(cost, 1.0 / (n_rows * n_cols)).detach()
    if plan == "identity":
        if n_rows != n_cols:
            raise ValueError(
                f"the identity plan needs a square cost (each row its own column), got {tuple(cost.shape)}"
            )
        eye = torch.eye(n_rows, dtype=cost.dtype, device=cost.device) / n_rows
        return eye.expand(cost.shape).detach()
    raise unknown_name("OT plan", str(plan), PLANS)


def off_identity(plan: Tensor) -> Tensor | None:
    """The share of a square plan's mass off its diagonal (..., detached, on its device): 0 for the identity coupling,
    1 for a plan that couples every row with another row's column; None for a non-square plan."""
    if plan.shape[-1] != plan.shape[-2]:
        return None
    plan = plan.detach()
    mass = plan.sum((-2, -1))
    return 1.0 - torch.diagonal(plan, dim1=-2, dim2=-1).sum(-1) / mass.clamp(min=torch.finfo(plan.dtype).tiny)


def _unknown_modality(modality) -> UserError:
    return unknown_name("OT modality", str(modality), MODALITIES, plural="OT modalities")


def paired_features(inputs: RegulariserInputs, modality: str = "joint") -> tuple[Tensor, Tensor]:
    """The rows to transport, (fine-tuned u, pre-trained v), each (B, D) or (B, 2D) for ``joint``."""
    if modality not in MODALITIES:
        raise _unknown_modality(modality)
    labels = inputs.labels
    if modality == "text":
        return inputs.class_text[labels], inputs.frozen_class_text[labels]
    if inputs.image is None or inputs.frozen_image is None:
        raise ValueError(f"OT modality {modality!r} needs both image and frozen_image features")
    if modality == "vision":
        return inputs.image, inputs.frozen_image
    fine_tuned = torch.cat([inputs.image, inputs.class_text[labels]], dim=1)
    frozen = torch.cat([inputs.frozen_image, inputs.frozen_class_text[labels]], dim=1)
    return fine_tuned, frozen


def transport_cost(fine_tuned: Tensor, frozen: Tensor, eta: float = 0.5) -> Tensor:
    """C_ij = eta * ||u_i - v_j||^2, (B, B'). Built from differences, so it is exact (0 on equal rows)
    and its gradient is finite everywhere, at the price of a (B, B', D) intermediate."""
    differences = fine_tuned[:, None, :] - frozen[None, :, :]
    return eta * differences.pow(2).sum(dim=-1)


def transport_plan(
    cost: Tensor,
    solver: str = "exact",
    reg: float = DEFAULT_REG,
    reg_m: float = DEFAULT_REG_M,
    stop_threshold: float = DEFAULT_STOP_THRESHOLD,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    backend: str = "auto",
    device_iterations: int = DEFAULT_DEVICE_ITERATIONS,
) -> Tensor:
    """The transport plan between uniform marginals for ``cost`` (n, m), detached, in its dtype and device.

    ``exact``: POT's network simplex (``ot.emd``), or on the torch backend the best of all assignments.
    ``sinkhorn``: entropic OT in the log domain (``ot.sinkhorn(method="sinkhorn_log")``), so a small
    ``reg`` cannot underflow. ``unbalanced``: entropic OT with KL-relaxed marginals
    (``ot.unbalanced.sinkhorn_unbalanced``, weight ``reg_m``); its plan's mass may differ from 1.
    ``stop_threshold``/``max_iterations`` steer POT; ``device_iterations`` is the torch backend's fixed count.
    """
    if solver not in SOLVERS:
        raise unknown_name("OT solver", solver, SOLVERS)
    if backend not in BACKENDS:
        raise unknown_name("OT backend", str(backend), BACKENDS)
    n_rows, n_cols = cost.shape
    enumerable = solver == "exact" and n_rows == n_cols and n_rows <= MAX_ENUMERATED_BATCH
    if backend == "auto":
        backend = "torch" if cost.device.type != "cpu" or enumerable else "pot"
    if backend == "torch":
        cost64 = cost.detach().to(torch.float64)
        if enumerable:
            return assignment_plan(cost64).to(cost.dtype)
        if solver != "exact":
            fraction = 1.0 if solver == "sinkhorn" else reg_m / (reg_m + reg)
            return log_sinkhorn_plan(cost64, reg, device_iterations, fraction).to(cost.dtype)
    import ot

    cost64 = cost.detach().to(device="cpu", dtype=torch.float64)
    source = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64)
    target = torch.full((n_cols,), 1.0 / n_cols, dtype=torch.float64)
    if solver == "exact":
        plan = ot.emd(source, target, cost64)
    elif solver == "sinkhorn":
        plan = ot.sinkhorn(
            source, target, cost64, reg, method="sinkhorn_log", stopThr=stop_threshold, numItermax=max_iterations
        )
    else:
        plan = _unbalanced_plan(source, target, cost64, reg, reg_m, stop_threshold, max_iterations)
    return plan.to(device=cost.device, dtype=cost.dtype)


@functools.lru_cache(maxsize=16)
def _permutations(size: int, device: str) -> Tensor:
    return torch.tensor(list(itertools.permutations(range(size))), dtype=torch.long, device=device)


def assignment_plan(cost: Tensor) -> Tensor:
    """The exact OT plan between uniform marginals of a square cost (..., B, B), B <= 8, on its device.

    With equal uniform marginals some optimal plan is a permutation matrix / B, so the best of the B!
    assignments is an optimal plan; all are scored in one gather, with no host synchronisation.
    Leading dimensions are independent problems (several packed runs at once).
    """
    size = cost.shape[-1]
    if cost.shape[-2] != size or size > MAX_ENUMERATED_BATCH:
        raise ValueError(
            f"assignment_plan needs a square cost with B <= {MAX_ENUMERATED_BATCH}, got {tuple(cost.shape)}"
        )
    perms = _permutations(size, str(cost.device))  # (P, B)
    rows = torch.arange(size, device=cost.device)
    totals = cost[..., rows, perms].sum(-1)  # (..., P): cost of sending row i to column perms[p, i]
    # index_select, not perms[argmin]: a 0-dim index tensor would be read on the host (a GPU sync)
    best = perms.index_select(0, totals.argmin(dim=-1).reshape(-1)).reshape(*cost.shape[:-2], size)  # (..., B)
    plan = torch.zeros_like(cost)
    return plan.scatter_(-1, best.unsqueeze(-1), 1.0 / size)


def log_sinkhorn_plan(cost: Tensor, reg: float, iterations: int, fraction: float = 1.0) -> Tensor:
    """Entropic OT plan between uniform marginals after a fixed number of log-domain Sinkhorn iterations.

    ``fraction`` = 1 is balanced OT (POT's ``sinkhorn_log``); reg_m / (reg_m + reg) gives the KL-relaxed
    marginals of POT's ``sinkhorn_unbalanced`` (reg_type "kl": the kernel carries the product of the
    marginals). Works on (..., n, m) without leaving the device.
    """
    n_rows, n_cols = cost.shape[-2:]
    log_a, log_b = -math.log(n_rows), -math.log(n_cols)
    log_kernel = -cost / reg + (log_a + log_b)
    log_u = cost.new_zeros(cost.shape[:-1])
    log_v = cost.new_zeros(cost.shape[:-2] + (n_cols,))
    for _ in range(iterations):
        log_u = fraction * (log_a - torch.logsumexp(log_kernel + log_v.unsqueeze(-2), dim=-1))
        log_v = fraction * (log_b - torch.logsumexp(log_kernel + log_u.unsqueeze(-1), dim=-2))
    return torch.exp(log_u.unsqueeze(-1) + log_kernel + log_v.unsqueeze(-2))


def _unbalanced_plan(source, target, cost64, reg, reg_m, stop_threshold, max_iterations) -> Tensor:
    """POT's unbalanced Sinkhorn, turning its silent numerical failure (it returns the last finite
    iterate, a plan of nearly zero mass) into an error that says which parameter to change."""
    import ot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = ot.unbalanced.sinkhorn_unbalanced(
            source, target, cost64, reg, reg_m, method="sinkhorn", stopThr=stop_threshold, numItermax=max_iterations
        )
    for warning in caught:
        if "numerical errors" in str(warning.message).lower():
            largest = cost64.max().item()
            raise UserError(
                f"unbalanced OT failed numerically: reg={reg} is too small for costs up to {largest:.3g} "
                f"(exp(-cost/reg) underflows); use a larger reg, e.g. reg >= {largest / 400:.2g}"
            )
        warnings.warn(warning.message, warning.category, stacklevel=3)
    if not torch.isfinite(plan).all():
        raise UserError(f"unbalanced OT gave a non-finite plan with reg={reg}, reg_m={reg_m}; use a larger reg")
    return plan


class OTRegulariser(Regulariser):
    """lambda * sum_ij P_ij C_ij between fine-tuned and frozen features (Prompt-OT's L_OT, weighted).

    ``weight`` is lambda, or with ``adaptive`` (:mod:`prompt_ot.losses.adaptive`) lambda's initial value: then
    :attr:`dual` holds lambda as device state, updated after each step by projected dual ascent towards a
    budget on the unweighted term. ``last_plan`` keeps the most recent plan for diagnostics and tests.
    ``plan`` other than ``optimal`` replaces the solver's plan by a control on the same cost and lambda
    (:data:`PLANS`); the solver's settings then play no part.
    """

    def __init__(
        self,
        modality: str = "joint",
        solver: str = "exact",
        eta: float = 0.5,
        weight: float = 10.0,
        reg: float = DEFAULT_REG,
        reg_m: float = DEFAULT_REG_M,
        stop_threshold: float = DEFAULT_STOP_THRESHOLD,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        backend: str = "auto",
        device_iterations: int = DEFAULT_DEVICE_ITERATIONS,
        adaptive: dict | bool | None = None,
        plan: str = "optimal",
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise _unknown_modality(modality)
        if plan not in PLANS:
            raise unknown_name("OT plan", str(plan), PLANS)
        self.plan = plan
        if solver not in SOLVERS:
            raise unknown_name("OT solver", str(solver), SOLVERS)
        self.modality = modality
        self.solver = solver
        self.eta = check_positive("eta", eta)
        # an adaptive lambda may start at 0 (no regularisation until the term exceeds its budget)
        self.weight = check_positive("weight", weight, allow_zero=adaptive not in (None, False))
        self.reg = check_positive("reg", reg)
        self.reg_m = check_positive("reg_m", reg_m)
        self.stop_threshold = check_positive("stop_threshold", stop_threshold)
        self.max_iterations = int(check_positive("max_iterations", max_iterations))
        if backend not in BACKENDS:
            raise unknown_name("OT backend", str(backend), BACKENDS)
        self.backend = backend
        self.device_iterations = int(check_positive("device_iterations", device_iterations))
        settings = check_adaptive(adaptive, self.weight)
        self.dual = DualWeight(settings, self.weight) if settings is not None else None
        self.last_plan: Tensor | None = None
        # the share of the last plan's mass off the identity coupling (a detached device scalar; None for a
        # non-square batch): 0 when every prompted feature was coupled with its own frozen one, as point-wise
        self.last_off_identity: Tensor | None = None

    @property
    def needs_frozen_image(self) -> bool:
        return self.modality != "text"

    def transport_loss(self, fine_tuned: Tensor, frozen: Tensor) -> Tensor:
        """The weighted OT loss between explicit rows u (fine-tuned) and v (pre-trained)."""
        cost = transport_cost(fine_tuned, frozen, self.eta)
        if self.plan != "optimal":
            plan = control_plan(cost, self.plan)
        else:
            plan = transport_plan(
                cost,
                self.solver,
                self.reg,
                self.reg_m,
                self.stop_threshold,
                self.max_iterations,
                self.backend,
                self.device_iterations,
            )
        self.last_plan = plan
        self.last_off_identity = off_identity(plan)
        term = (plan * cost).sum()
        if self.dual is None:
            return self.weight * term
        self.dual.observe(term)
        return self.dual.value.to(term.dtype) * term

    def after_step(self) -> None:
        if self.dual is not None:
            self.dual.step()

    def forward(self, inputs: RegulariserInputs) -> Tensor:
        return self.transport_loss(*paired_features(inputs, self.modality))

    def extra_repr(self) -> str:
        entropic = f", reg={self.reg}" if self.solver != "exact" else ""
        marginal = f", reg_m={self.reg_m}" if self.solver == "unbalanced" else ""
        adaptive = ", adaptive" if self.dual is not None else ""
        plan = f", plan={self.plan!r}" if self.plan != "optimal" else ""
        return (
            f"modality={self.modality!r}, solver={self.solver!r}, eta={self.eta}, weight={self.weight}"
            f"{entropic}{marginal}{adaptive}{plan}"
        )
