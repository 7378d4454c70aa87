"""The regularisers: OT loss against POT, gradients against finite differences, invariances,
degenerate batches, the point-wise baselines against hand computations, and config errors."""

import math
import warnings

import ot
import pytest
import torch
import torch.nn.functional as F

from prompt_ot.errors import UserError
from prompt_ot.losses import (
    KgCoOpLoss,
    OTRegulariser,
    PointwiseL1,
    RegulariserInputs,
    assignment_plan,
    build_regulariser,
    control_plan,
    log_sinkhorn_plan,
    paired_features,
    transport_cost,
    transport_plan,
)

SOLVERS = ["exact", "sinkhorn", "unbalanced"]
MODALITIES = ["joint", "vision", "text"]


def unit(*shape, dtype=torch.float64, generator=None):
    return F.normalize(torch.randn(*shape, dtype=dtype, generator=generator), dim=-1)


def random_inputs(batch=5, dim=6, classes=4, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return RegulariserInputs(
        image=unit(batch, dim, dtype=dtype, generator=generator),
        frozen_image=unit(batch, dim, dtype=dtype, generator=generator),
        class_text=unit(classes, dim, dtype=dtype, generator=generator),
        frozen_class_text=unit(classes, dim, dtype=dtype, generator=generator),
        labels=torch.randint(0, classes, (batch,), generator=generator),
    )


def uniform(n):
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def central_differences(function, tensor, eps=1e-6):
    """d function / d tensor, element by element, by central differences (tensor is modified in place)."""
    gradient = torch.zeros_like(tensor)
    flat, flat_gradient = tensor.data.view(-1), gradient.view(-1)
    for index in range(flat.numel()):
        original = flat[index].item()
        flat[index] = original + eps
        above = function().item()
        flat[index] = original - eps
        below = function().item()
        flat[index] = original
        flat_gradient[index] = (above - below) / (2 * eps)
    return gradient


# --- the cost and the exact loss ------------------------------------------------------------------


def test_joint_cost_is_one_minus_cosine_on_each_half():
    # DESIGN: for unit vectors and eta = 0.5, C_ij = (1 - cos(f_i, g_j)) + (1 - cos(T_{y_i}, S_{y_j})).
    inputs = random_inputs(batch=4, seed=1)
    cost = transport_cost(*paired_features(inputs, "joint"), eta=0.5)
    y = inputs.labels.tolist()
    for i in range(4):
        for j in range(4):
            image_part = 1 - torch.dot(inputs.image[i], inputs.frozen_image[j])
            text_part = 1 - torch.dot(inputs.class_text[y[i]], inputs.frozen_class_text[y[j]])
            assert cost[i, j].item() == pytest.approx((image_part + text_part).item(), abs=1e-12)


def test_cost_is_eta_times_squared_distance_for_any_vectors():
    generator = torch.Generator().manual_seed(2)
    u = torch.randn(3, 5, dtype=torch.float64, generator=generator) * 3
    v = torch.randn(4, 5, dtype=torch.float64, generator=generator)
    cost = transport_cost(u, v, eta=0.7)
    assert cost.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            expected = 0.7 * sum((a - b) ** 2 for a, b in zip(u[i].tolist(), v[j].tolist()))
            assert cost[i, j].item() == pytest.approx(expected, rel=1e-12)


def rows_by_definition(inputs, modality):
    """u_i and v_j written out from the paper's definition, one row at a time."""
    f, g, T, S, y = inputs.image, inputs.frozen_image, inputs.class_text, inputs.frozen_class_text, inputs.labels
    rows = {
        "vision": lambda i: (f[i], g[i]),
        "text": lambda i: (T[y[i]], S[y[i]]),
        "joint": lambda i: (torch.cat([f[i], T[y[i]]]), torch.cat([g[i], S[y[i]]])),
    }[modality]
    pairs = [rows(i) for i in range(len(y))]
    return torch.stack([u for u, _ in pairs]), torch.stack([v for _, v in pairs])


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("batch", [1, 4, 7])
def test_exact_loss_equals_pot_emd2(batch, modality):
    inputs = random_inputs(batch=batch, seed=batch)
    regulariser = OTRegulariser(modality=modality, solver="exact", weight=1.0)
    loss = regulariser(inputs)
    fine_tuned, frozen = rows_by_definition(inputs, modality)
    cost = 0.5 * torch.cdist(fine_tuned, frozen) ** 2  # an independent route to the same cost
    expected = ot.emd2(uniform(batch), uniform(batch), cost)
    assert loss.item() == pytest.approx(float(expected), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("reg", [0.05, 0.3])
def test_sinkhorn_loss_lies_between_exact_and_exact_plus_reg_log_batch(reg):
    # <P_exact, C> <= <P_reg, C> <= <P_exact, C> + reg * log B: the entropic plan is feasible for the
    # exact problem, and it beats the exact plan (entropy log B) on the entropic objective while no
    # plan has entropy above 2 log B.
    batch = 6
    inputs = random_inputs(batch=batch, seed=15)
    exact = OTRegulariser(solver="exact", weight=1.0)(inputs).item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn = OTRegulariser(solver="sinkhorn", weight=1.0, reg=reg, stop_threshold=1e-9)(inputs).item()
    assert exact - 1e-9 <= sinkhorn <= exact + reg * math.log(batch) + 1e-9


def test_sinkhorn_with_a_small_reg_does_not_underflow():
    # Every cost is >= 2, so exp(-cost / reg) is 0 in float64 for reg = 1e-3: scaling-domain Sinkhorn
    # divides by zero, the log-domain iterations do not. The matching is clear, so the plan is ~I/B.
    batch = 5
    generator = torch.Generator().manual_seed(16)
    noise = 0.01 * torch.rand(batch, batch, generator=generator, dtype=torch.float64)
    cost = 2.0 + 0.5 * (1 - torch.eye(batch, dtype=torch.float64)) + noise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = transport_plan(cost, "sinkhorn", reg=1e-3)
    torch.testing.assert_close(plan, torch.eye(batch, dtype=torch.float64) / batch, atol=1e-12, rtol=0)


# --- gradients -----------------------------------------------------------------------------------


def test_exact_gradient_matches_finite_differences_of_the_re_solved_loss():
    # gradcheck perturbs the fine-tuned features and re-solves the plan at every evaluation, so it
    # checks that the fixed-plan gradient is the gradient of the true OT loss (unique plan here).
    inputs = random_inputs(batch=5, seed=4)
    regulariser = OTRegulariser(modality="joint", solver="exact", weight=2.0)

    def loss_of(image, class_text):
        return regulariser(
            RegulariserInputs(image, inputs.frozen_image, class_text, inputs.frozen_class_text, inputs.labels)
        )

    image = inputs.image.clone().requires_grad_()
    class_text = inputs.class_text.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss_of, (image, class_text), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["sinkhorn", "unbalanced"])
def test_entropic_gradient_is_the_fixed_plan_gradient(solver):
    inputs = random_inputs(batch=5, seed=5)
    regulariser = OTRegulariser(modality="joint", solver=solver, weight=3.0)
    image = inputs.image.clone().requires_grad_()
    class_text = inputs.class_text.clone().requires_grad_()
    regulariser(
        RegulariserInputs(image, inputs.frozen_image, class_text, inputs.frozen_class_text, inputs.labels)
    ).backward()
    plan = regulariser.last_plan
    assert not plan.requires_grad

    def fixed_plan_loss():
        features = RegulariserInputs(image, inputs.frozen_image, class_text, inputs.frozen_class_text, inputs.labels)
        return 3.0 * (plan * transport_cost(*paired_features(features, "joint"))).sum()

    with torch.no_grad():
        expected_image = central_differences(fixed_plan_loss, image)
        expected_text = central_differences(fixed_plan_loss, class_text)
    torch.testing.assert_close(image.grad, expected_image, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(class_text.grad, expected_text, atol=1e-7, rtol=1e-6)


def test_sinkhorn_value_and_gradient_against_pot():
    # The loss value is POT's sinkhorn2 (the linear term <P, C>). Its gradient is P dC, which is the
    # gradient of the entropic OT value <P, C> + reg * sum P log P (envelope theorem), i.e. what
    # autodiff through POT's iterations gives for that objective at a tight tolerance. It is not the
    # autodiff gradient of sinkhorn2 itself, which also differentiates P(C) inside <P(C), C>.
    reg, threshold = 0.1, 1e-12
    generator = torch.Generator().manual_seed(6)
    frozen = unit(6, 8, generator=generator)
    fine_tuned = F.normalize(frozen + 0.5 * torch.randn(6, 8, dtype=torch.float64, generator=generator), dim=-1)
    regulariser = OTRegulariser(solver="sinkhorn", weight=1.0, reg=reg, stop_threshold=threshold)
    ours = fine_tuned.clone().requires_grad_()
    loss = regulariser.transport_loss(ours, frozen)
    loss.backward()

    through_pot = fine_tuned.clone().requires_grad_()
    cost = transport_cost(through_pot, frozen)
    plan = ot.sinkhorn(uniform(6), uniform(6), cost, reg, method="sinkhorn_log", stopThr=threshold, numItermax=100_000)
    ((plan * cost).sum() + reg * (plan * plan.log()).sum()).backward()
    torch.testing.assert_close(ours.grad, through_pot.grad, atol=1e-9, rtol=1e-7)

    through_sinkhorn2 = fine_tuned.clone().requires_grad_()
    value = ot.sinkhorn2(
        uniform(6),
        uniform(6),
        transport_cost(through_sinkhorn2, frozen),
        reg,
        method="sinkhorn_log",
        stopThr=threshold,
        numItermax=100_000,
    )
    assert loss.item() == pytest.approx(value.item(), rel=1e-9)
    value.backward()
    assert (ours.grad - through_sinkhorn2.grad).abs().max() > 1e-3 * ours.grad.abs().max()


# --- what the loss is when nothing moved ---------------------------------------------------------


def unchanged_inputs(batch=5, seed=7):
    """Fine-tuned features equal to the frozen ones, with a repeated label."""
    inputs = random_inputs(batch=batch, seed=seed)
    labels = torch.tensor([0, 2, 2, 1, 0][:batch])
    return RegulariserInputs(
        inputs.frozen_image, inputs.frozen_image, inputs.frozen_class_text, inputs.frozen_class_text, labels
    )


@pytest.mark.parametrize("modality", MODALITIES)
def test_exact_loss_is_zero_when_nothing_moved(modality):
    assert OTRegulariser(modality=modality, solver="exact")(unchanged_inputs()).item() == 0.0


@pytest.mark.parametrize("modality", ["joint", "vision"])
def test_sinkhorn_loss_when_nothing_moved_is_positive_but_at_most_reg_log_batch(modality):
    # The entropic plan has full support, so it pays for off-diagonal pairs: the loss is > 0. It is
    # still small: comparing with the identity plan I/B (cost 0, entropy log B) and using that no plan
    # has entropy above 2 log B gives <P, C> <= reg * log B.
    batch, weight, reg = 5, 2.0, 0.1
    regulariser = OTRegulariser(modality=modality, solver="sinkhorn", weight=weight, reg=reg)
    loss = regulariser(unchanged_inputs(batch)).item()
    assert 0.0 < loss <= weight * reg * math.log(batch)
    assert regulariser.last_plan.diagonal().sum() < 1.0


def test_unbalanced_loss_when_nothing_moved_is_positive():
    # Same reason as Sinkhorn: the entropic plan puts some mass on every (i, j).
    regulariser = OTRegulariser(solver="unbalanced")
    assert regulariser(unchanged_inputs()).item() > 0.0
    assert (regulariser.last_plan > 0).all()


# --- permutations: transport versus point-wise ---------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_ot_loss_is_invariant_to_permuting_the_frozen_batch(solver):
    # The frozen batch is the rows v_j = [g_j ; S_{y_j}]: permuting j moves g_j together with its
    # label on the frozen side, which permutes the columns of the cost and of the plan.
    inputs = random_inputs(batch=6, seed=8)
    permutation = torch.tensor([3, 0, 5, 1, 2, 4])
    fine_tuned, frozen = paired_features(inputs, "joint")
    permuted_inputs = RegulariserInputs(
        inputs.image,
        inputs.frozen_image[permutation],
        inputs.class_text,
        inputs.frozen_class_text,
        inputs.labels[permutation],
    )
    _, permuted_frozen = paired_features(permuted_inputs, "joint")
    assert torch.equal(permuted_frozen, frozen[permutation])

    regulariser = OTRegulariser(solver=solver, stop_threshold=1e-10)
    loss = regulariser.transport_loss(fine_tuned, frozen)
    plan = regulariser.last_plan
    permuted_loss = regulariser.transport_loss(fine_tuned, permuted_frozen)
    assert permuted_loss.item() == pytest.approx(loss.item(), rel=1e-8)
    torch.testing.assert_close(regulariser.last_plan, plan[:, permutation], atol=1e-9, rtol=1e-7)


def test_pointwise_l1_changes_when_the_frozen_images_are_permuted_but_ot_does_not():
    # f = g and T = S: both losses are 0. Shuffling the frozen images (distinct rows, no fixed point)
    # leaves a perfect matching for OT, but pairs every f_i with some g_j != f_i for the L1 term.
    inputs = unchanged_inputs(batch=4)
    derangement = torch.tensor([1, 2, 3, 0])
    shuffled = RegulariserInputs(
        inputs.image, inputs.frozen_image[derangement], inputs.class_text, inputs.frozen_class_text, inputs.labels
    )
    vision_ot, pointwise = OTRegulariser(modality="vision"), PointwiseL1(image_weight=10.0, text_weight=25.0)
    assert vision_ot(inputs).item() == 0.0 and vision_ot(shuffled).item() == 0.0
    assert pointwise(inputs).item() == 0.0
    expected = 10.0 * (inputs.image - inputs.image[derangement]).abs().mean().item()
    assert expected > 0
    assert pointwise(shuffled).item() == pytest.approx(expected, rel=1e-12)


# --- degenerate batches --------------------------------------------------------------------------


def degenerate_inputs(case, dtype, batch=5, dim=6, classes=3):
    """Every image row the same (up to 1e-7 noise for ``near_duplicate``) and one label for the batch;
    ``identical`` also makes the fine-tuned features equal to the frozen ones, so every cost is 0."""
    generator = torch.Generator().manual_seed(9)

    def repeated_row():
        row = unit(1, dim, dtype=dtype, generator=generator).repeat(batch, 1)
        if case == "near_duplicate":
            row = F.normalize(row + 1e-7 * torch.randn(batch, dim, dtype=dtype, generator=generator), dim=-1)
        return row

    image, frozen_image = repeated_row(), repeated_row()
    class_text = unit(classes, dim, dtype=dtype, generator=generator)
    frozen_class_text = unit(classes, dim, dtype=dtype, generator=generator)
    if case == "identical":
        frozen_image, frozen_class_text = image.clone(), class_text.clone()
    labels = torch.zeros(batch, dtype=torch.long)
    image, class_text = image.requires_grad_(), class_text.requires_grad_()
    return RegulariserInputs(image, frozen_image, class_text, frozen_class_text, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["duplicate", "near_duplicate", "identical"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_degenerate_batches_give_finite_loss_and_gradient(solver, case, dtype):
    inputs = degenerate_inputs(case, dtype)
    regulariser = OTRegulariser(solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent "did not converge" or numerical-error warnings either
        loss = regulariser(inputs)
    loss.backward()
    assert loss.dtype == dtype and torch.isfinite(loss)
    assert torch.isfinite(inputs.image.grad).all() and torch.isfinite(inputs.class_text.grad).all()
    assert torch.isfinite(regulariser.last_plan).all()
    if solver != "unbalanced":
        assert regulariser.last_plan.sum().item() == pytest.approx(1.0, abs=1e-5)


# --- the plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_plan_has_uniform_marginals_and_the_cost_dtype(solver, dtype):
    batch = 7
    inputs = random_inputs(batch=batch, dtype=dtype, seed=10)
    cost = transport_cost(*paired_features(inputs, "joint")).requires_grad_()
    plan = transport_plan(cost, solver)
    assert plan.dtype == dtype and plan.device == cost.device and not plan.requires_grad
    assert (plan >= 0).all()
    tolerance = 1e-6 if dtype == torch.float32 or solver == "sinkhorn" else 1e-12
    torch.testing.assert_close(plan.sum(dim=1), torch.full((batch,), 1 / batch, dtype=dtype), atol=tolerance, rtol=0)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((batch,), 1 / batch, dtype=dtype), atol=tolerance, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", SOLVERS)
def test_plan_and_gradient_stay_on_the_gpu(solver):
    inputs = random_inputs(batch=4, dtype=torch.float32, seed=17)
    on_gpu = RegulariserInputs(*(None if t is None else t.cuda() for t in vars(inputs).values()))
    image = on_gpu.image.requires_grad_()
    regulariser = OTRegulariser(solver=solver)  # backend "auto": solved on the GPU
    regulariser(on_gpu)  # warm-up: the permutation table is built once per device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation now raises
    try:
        loss = regulariser(on_gpu)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert regulariser.last_plan.device.type == "cuda" and regulariser.last_plan.dtype == torch.float32
    cpu_loss = OTRegulariser(solver=solver)(inputs)
    assert loss.item() == pytest.approx(cpu_loss.item(), rel=1e-5 if solver == "exact" else 2e-4)
    assert image.grad.device.type == "cuda" and torch.isfinite(image.grad).all()


@pytest.mark.parametrize("batch", [4, 3])
@pytest.mark.parametrize("solver", SOLVERS)
def test_the_device_backend_reads_nothing_on_the_host(solver, batch):
    """The CPU twin of the GPU test above: after a warm-up, the torch backend's loss and gradient read no
    tensor value on the host (a single problem's argmin is a 0-dim index, which indexing would read)."""
    from tests.support.host_reads import HostReads

    inputs = random_inputs(batch=batch, dtype=torch.float32, seed=17)
    image = inputs.image.requires_grad_()
    regulariser = OTRegulariser(solver=solver, backend="torch")
    regulariser(inputs)
    with HostReads() as reads:
        loss = regulariser(inputs)
        loss.backward()
    assert reads.found == []
    assert image.grad is not None and torch.isfinite(image.grad).all()


def test_exact_plan_is_a_scaled_permutation_for_distinct_features():
    plan = transport_plan(transport_cost(*paired_features(random_inputs(batch=6, seed=11))), "exact")
    assert sorted(plan.flatten().tolist()).count(0.0) == 30
    assert torch.equal((plan > 0).sum(dim=0), torch.ones(6, dtype=torch.long))


# --- the device (torch) backend ---------------------------------------------------------------


def drifted_cost(batch, drift, seed, dim=16):
    """Joint costs of fine-tuned features that drifted from their frozen ones by about ``drift``."""
    generator = torch.Generator().manual_seed(seed)
    frozen = unit(batch, 2 * dim, generator=generator)
    moved = F.normalize(
        frozen + drift * torch.randn(batch, 2 * dim, dtype=torch.float64, generator=generator) / math.sqrt(2 * dim),
        dim=-1,
    )
    return transport_cost(moved, frozen)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8])
def test_assignment_plan_reaches_the_network_simplex_optimum(batch):
    for seed in range(20):
        cost = drifted_cost(batch, drift=[0.3, 1.0, 3.0][seed % 3], seed=seed)
        plan = assignment_plan(cost)
        reference = ot.emd(uniform(batch), uniform(batch), cost)
        assert (plan * cost).sum().item() == pytest.approx((reference * cost).sum().item(), rel=1e-12, abs=1e-15)
        assert torch.allclose(plan.sum(0), uniform(batch)) and torch.allclose(plan.sum(1), uniform(batch))
        assert set(plan.unique().tolist()) <= {0.0, 1.0 / batch}
        if batch > 1:  # distinct random costs have one optimal vertex: the same plan as POT's
            assert torch.equal(plan, reference)


def test_assignment_plan_solves_stacked_problems_independently():
    costs = torch.stack([drifted_cost(4, 2.0, seed) for seed in range(6)])
    together = assignment_plan(costs)
    for cost, plan in zip(costs, together):
        assert torch.equal(plan, assignment_plan(cost))
    with pytest.raises(ValueError, match="square"):
        assignment_plan(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="B <= 8"):
        assignment_plan(torch.zeros(9, 9, dtype=torch.float64))


@pytest.mark.parametrize("solver", ["sinkhorn", "unbalanced"])
@pytest.mark.parametrize("batch", [4, 16, 64])
def test_device_sinkhorn_matches_pot_on_joint_costs(solver, batch):
    for drift in (0.3, 1.0, 3.0):
        cost = drifted_cost(batch, drift, seed=batch)
        reference = transport_plan(cost, solver, backend="pot", stop_threshold=1e-10, max_iterations=100_000)
        plan = transport_plan(cost, solver, backend="torch")
        # relative to the entries' size 1/B; the loss sum P C is what training sees
        assert (plan - reference).abs().max().item() * batch < 1e-3
        assert (plan * cost).sum().item() == pytest.approx((reference * cost).sum().item(), rel=2e-4)


def test_fixed_iteration_log_sinkhorn_converges_to_pot():
    cost = drifted_cost(8, 1.0, seed=3)
    reference = ot.sinkhorn(uniform(8), uniform(8), cost, 0.1, method="sinkhorn_log", stopThr=1e-12, numItermax=10**6)
    errors = [(log_sinkhorn_plan(cost, 0.1, n) - reference).abs().max().item() for n in (1, 10, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9


@pytest.mark.parametrize("solver", SOLVERS)
def test_torch_and_pot_backends_give_the_same_loss_and_gradient(solver):
    inputs = random_inputs(batch=4, dim=8, seed=21)
    results = []
    for backend in ("pot", "torch"):
        image = inputs.image.clone().requires_grad_()
        regulariser = OTRegulariser(solver=solver, backend=backend)
        loss = regulariser(
            RegulariserInputs(image, inputs.frozen_image, inputs.class_text, inputs.frozen_class_text, inputs.labels)
        )
        loss.backward()
        results.append((loss.item(), image.grad))
    (pot_loss, pot_grad), (torch_loss, torch_grad) = results
    tolerance = 1e-12 if solver == "exact" else 1e-4
    assert torch_loss == pytest.approx(pot_loss, rel=tolerance)
    assert torch.allclose(torch_grad, pot_grad, rtol=tolerance, atol=tolerance * 1e-2)


def test_auto_solves_enumerable_exact_plans_on_the_cpu_with_the_torch_backend(monkeypatch):
    """On the CPU, ``auto`` gives exact plans of square batches up to 8 to the enumeration (the same plan as POT's),
    and the rest (entropic plans, larger or non-square batches) to POT."""
    from prompt_ot.losses import ot as module

    calls = []
    enumerate_all = module.assignment_plan
    monkeypatch.setattr(module, "assignment_plan", lambda cost: calls.append(cost.shape) or enumerate_all(cost))
    cost = drifted_cost(4, 1.0, seed=7)
    assert torch.equal(transport_plan(cost, "exact"), ot.emd(uniform(4), uniform(4), cost)) and calls == [(4, 4)]
    transport_plan(drifted_cost(12, 1.0, seed=7), "exact")
    transport_plan(cost, "sinkhorn")
    assert calls == [(4, 4)]
    # the entropic CPU plan is POT's converged one, not the torch backend's fixed iterations
    assert not torch.equal(transport_plan(cost, "sinkhorn"), transport_plan(cost, "sinkhorn", backend="torch"))


def test_torch_backend_falls_back_to_pot_for_exact_plans_it_cannot_enumerate():
    cost = drifted_cost(12, 1.0, seed=4)
    assert torch.equal(transport_plan(cost, "exact", backend="torch"), ot.emd(uniform(12), uniform(12), cost))
    rectangular = transport_cost(unit(3, 4), unit(5, 4))
    plan = transport_plan(rectangular, "exact", backend="torch")
    assert torch.allclose(plan.sum(1), uniform(3)) and torch.allclose(plan.sum(0), uniform(5))


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="OT backend 'gpu'"):
        OTRegulariser(backend="gpu")
    with pytest.raises(UserError, match="device_iterations"):
        OTRegulariser(device_iterations=0)


def test_unbalanced_with_too_small_reg_is_a_user_error():
    inputs = random_inputs(batch=5, seed=12)
    with pytest.raises(UserError, match="reg=0.0001 is too small"):
        OTRegulariser(solver="unbalanced", reg=1e-4)(inputs)


# --- the point-wise baselines --------------------------------------------------------------------


def test_kgcoop_equals_hand_computation():
    class_text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    frozen_class_text = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])
    cosines = [1.0, 1 / math.sqrt(2), -1.0]
    expected = 8.0 * (1 - sum(cosines) / 3)
    inputs = RegulariserInputs(None, None, class_text, frozen_class_text, torch.tensor([0]))
    assert KgCoOpLoss()(inputs).item() == pytest.approx(expected, rel=1e-6)


def test_pointwise_l1_equals_hand_computation():
    image, frozen_image = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([[0.0, 4.0], [0.5, 0.0]])
    class_text, frozen_class_text = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[0.0, 3.0, 1.5]])
    image_term = (1.0 + 2.0 + 0.0 + 1.0) / 4
    text_term = (1.0 + 2.0 + 0.5) / 3
    inputs = RegulariserInputs(image, frozen_image, class_text, frozen_class_text, torch.tensor([0, 0]))
    assert PointwiseL1()(inputs).item() == pytest.approx(10 * image_term + 25 * text_term, rel=1e-6)
    text_only = PointwiseL1(image_weight=0, text_weight=25)
    assert not text_only.needs_frozen_image
    no_images = RegulariserInputs(None, None, class_text, frozen_class_text, torch.tensor([0, 0]))
    assert text_only(no_images).item() == pytest.approx(25 * text_term, rel=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda scale: OTRegulariser(solver="exact", weight=1.5 * scale),
        lambda scale: OTRegulariser(solver="sinkhorn", weight=1.5 * scale),
        lambda scale: OTRegulariser(solver="unbalanced", weight=1.5 * scale),
        lambda scale: PointwiseL1(image_weight=2.0 * scale, text_weight=3.0 * scale),
        lambda scale: KgCoOpLoss(weight=1.5 * scale),
    ],
    ids=["exact", "sinkhorn", "unbalanced", "pointwise_l1", "kgcoop"],
)
def test_loss_is_linear_in_its_weights(make):
    inputs = random_inputs(seed=13)
    base = make(1.0)(inputs).item()
    assert base > 0
    assert make(4.0)(inputs).item() == pytest.approx(4.0 * base, rel=1e-10)


def test_which_regularisers_need_frozen_image_features():
    assert OTRegulariser(modality="joint").needs_frozen_image
    assert OTRegulariser(modality="vision").needs_frozen_image
    assert not OTRegulariser(modality="text").needs_frozen_image
    assert PointwiseL1().needs_frozen_image
    assert not KgCoOpLoss().needs_frozen_image
    inputs = random_inputs(seed=14)
    text_only = RegulariserInputs(None, None, inputs.class_text, inputs.frozen_class_text, inputs.labels)
    assert OTRegulariser(modality="text")(text_only).item() == OTRegulariser(modality="text")(inputs).item()


# --- building from a config ----------------------------------------------------------------------


def test_build_regulariser_from_specs():
    assert build_regulariser(None) is None
    built = build_regulariser(
        {"kind": "ot", "modality": "vision", "solver": "unbalanced", "weight": 5, "eta": 0.25, "reg": 0.2, "reg_m": 2}
    )
    assert isinstance(built, OTRegulariser)
    assert (built.modality, built.solver, built.weight, built.eta, built.reg, built.reg_m) == (
        "vision",
        "unbalanced",
        5.0,
        0.25,
        0.2,
        2.0,
    )
    default = build_regulariser({"kind": "ot"})
    assert (default.modality, default.solver, default.weight, default.eta) == ("joint", "exact", 10.0, 0.5)
    pointwise = build_regulariser({"kind": "pointwise_l1", "image_weight": 10, "text_weight": 25})
    assert isinstance(pointwise, PointwiseL1) and (pointwise.image_weight, pointwise.text_weight) == (10.0, 25.0)
    kgcoop = build_regulariser({"kind": "kgcoop", "weight": 8.0})
    assert isinstance(kgcoop, KgCoOpLoss) and kgcoop.weight == 8.0


@pytest.mark.parametrize(
    "spec, named",
    [
        ({"kind": "optimal"}, ["'optimal'", "kgcoop", "ot", "pointwise_l1"]),
        ({"kind": "ot", "modality": "audio"}, ["'audio'", "joint", "text", "vision"]),
        ({"kind": "ot", "solver": "greenkhorn"}, ["'greenkhorn'", "exact", "sinkhorn", "unbalanced"]),
        ({"kind": "ot", "wieght": 1.0}, ["'wieght'", "weight", "eta", "reg", "reg_m"]),
        ({"kind": "ot", "weight": 0}, ["'weight'", "> 0", "0"]),
        ({"kind": "ot", "weight": -1.0}, ["'weight'", "> 0", "-1.0"]),
        ({"kind": "ot", "eta": 0.0}, ["'eta'", "> 0"]),
        ({"kind": "ot", "solver": "sinkhorn", "reg": -0.1}, ["'reg'", "> 0", "-0.1"]),
        ({"kind": "ot", "reg_m": float("nan")}, ["'reg_m'", "finite number"]),
        ({"kind": "ot", "weight": "ten"}, ["'weight'", "'ten'"]),
        ({"kind": "kgcoop", "weight": 0}, ["'weight'", "> 0"]),
        ({"kind": "pointwise_l1", "image_weight": -1}, ["'image_weight'", ">= 0"]),
        ({"kind": "pointwise_l1", "image_weight": 0, "text_weight": 0}, ["image_weight", "text_weight"]),
        ({"weight": 1.0}, ["'kind'", "kgcoop", "ot", "pointwise_l1"]),
        ("ot", ["'ot'", "kind"]),
    ],
)
def test_build_regulariser_rejects_bad_specs(spec, named):
    with pytest.raises(UserError) as error:
        build_regulariser(spec)
    message = str(error.value)
    for text in named:
        assert text in message, f"{text!r} not in {message!r}"


# --- the transport-plan controls (identity, uniform) ------------------------------------------------


def plan_loss_by_definition(inputs, modality, plan, weight):
    """lambda * sum_ij P_ij eta ||u_i - v_j||^2 with the control plan written out pair by pair."""
    u, v = rows_by_definition(inputs, modality)
    batch, total = len(u), 0.0
    for i in range(batch):
        if plan == "identity":
            total = total + 0.5 * (u[i] - v[i]).pow(2).sum() / batch
        else:
            for j in range(batch):
                total = total + 0.5 * (u[i] - v[j]).pow(2).sum() / batch**2
    return weight * total


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("plan", ["identity", "uniform"])
def test_control_plans_equal_their_plain_restatement_in_loss_and_gradients(plan, modality):
    weight = 3.0
    mine, theirs = random_inputs(batch=6, seed=11), random_inputs(batch=6, seed=11)
    for inputs in (mine, theirs):
        inputs.image.requires_grad_(True)
        inputs.class_text.requires_grad_(True)
    loss = OTRegulariser(modality=modality, weight=weight, plan=plan)(mine)
    expected = plan_loss_by_definition(theirs, modality, plan, weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    expected.backward()
    for ours, reference in ((mine.image, theirs.image), (mine.class_text, theirs.class_text)):
        if modality == "text" and ours is mine.image:
            assert ours.grad is None
            continue
        if modality == "vision" and ours is mine.class_text:
            assert ours.grad is None
            continue
        torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-12, atol=1e-14)


def test_the_uniform_plan_is_the_gap_between_batch_means_plus_the_spreads():
    inputs = random_inputs(batch=7, seed=3)
    u, v = rows_by_definition(inputs, "joint")
    spread = lambda x: (x - x.mean(0)).pow(2).sum(-1).mean()  # noqa: E731
    expected = 0.5 * ((u.mean(0) - v.mean(0)).pow(2).sum() + spread(u) + spread(v))
    loss = OTRegulariser(weight=1.0, plan="uniform")(inputs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("backend", ["pot", "torch"])
@pytest.mark.parametrize("seed", range(20))
def test_the_optimal_plan_never_costs_more_than_the_controls(seed, backend):
    inputs = random_inputs(batch=1 + seed % 8, dim=4, classes=3, seed=seed)
    losses = {
        plan: OTRegulariser(weight=1.0, plan=plan, backend=backend)(inputs).item()
        for plan in ("optimal", "identity", "uniform")
    }
    assert losses["optimal"] <= losses["identity"] + 1e-12
    assert losses["optimal"] <= losses["uniform"] + 1e-12


def test_control_plans_have_uniform_marginals_and_need_no_solver():
    cost = torch.rand(5, 5, dtype=torch.float64)
    for plan in ("identity", "uniform"):
        p = control_plan(cost, plan)
        torch.testing.assert_close(p.sum(1), uniform(5))
        torch.testing.assert_close(p.sum(0), uniform(5))
    assert torch.equal(control_plan(cost, "identity"), torch.eye(5, dtype=torch.float64) / 5)
    regulariser = OTRegulariser(plan="identity", solver="sinkhorn")  # the solver plays no part
    regulariser(random_inputs(batch=4))
    torch.testing.assert_close(regulariser.last_plan, torch.eye(4, dtype=torch.float64) / 4)


def test_an_unknown_plan_is_named_with_the_choices():
    with pytest.raises(UserError, match=r"OT plan.*'diagonal'.*identity.*optimal.*uniform"):
        build_regulariser({"kind": "ot", "plan": "diagonal"})
    with pytest.raises(ValueError, match="square"):
        control_plan(torch.zeros(3, 4), "identity")


def test_off_identity_is_zero_for_the_identity_coupling_and_one_for_a_derangement():
    from prompt_ot.losses.ot import off_identity

    inputs = random_inputs(batch=5, seed=4)
    u, _ = rows_by_definition(inputs, "vision")
    regulariser = OTRegulariser(modality="vision", weight=1.0)
    shifted = RegulariserInputs(**{**inputs.__dict__, "frozen_image": u.roll(1, dims=0)})  # v_j = u_(j-1)
    regulariser(RegulariserInputs(**{**inputs.__dict__, "frozen_image": u.clone()}))
    assert regulariser.last_off_identity.item() == 0.0  # nothing moved: each row's own partner
    regulariser(shifted)
    assert regulariser.last_off_identity.item() == pytest.approx(1.0)  # every row's partner is another row's
    assert off_identity(torch.full((3, 3), 1 / 9)).item() == pytest.approx(2 / 3)
    assert off_identity(torch.zeros(2, 3)) is None
