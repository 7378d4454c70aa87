"""Adaptive regularisation strength: lambda by projected dual ascent on an OT budget (prompt_ot/losses/adaptive.py).

The rule on controlled terms (rises above the budget, falls to 0 below it, stays within [0, max_weight], a
relative budget from the first epoch's mean), through the OT regulariser and the trainer (per-epoch records,
each packed run its own lambda, a killed run resumes to the same end, a step reads nothing on the host), the
settings' validation, and the pipeline's metrics and report (the ablation row, the lambda-sweep figure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from prompt_ot.config import resolve_method, validate_params
from prompt_ot.errors import UserError
from prompt_ot.losses import OTRegulariser, RegulariserInputs, build_regulariser
from prompt_ot.losses.adaptive import DEFAULT_BUDGET, DEFAULT_DUAL_LR, DEFAULT_MAX_WEIGHT, AdaptiveSettings, DualWeight
from prompt_ot.methods import build_model, get_method
from prompt_ot.train import RunSpec, TrainConfig, run_fingerprint, train, train_packed
from tests.support.figures import drawn_figures
from tests.support.models import ToyImages, tiny_clip

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red thing", "green thing", "blue thing"]
SHALLOW = {"text_depth": 2, "vision_depth": 2}


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def dual(budget=0.1, relative=False, dual_lr=1.0, max_weight=100.0, initial=10.0) -> DualWeight:
    return DualWeight(
        AdaptiveSettings(budget=budget, relative=relative, dual_lr=dual_lr, max_weight=max_weight), initial
    )


def feed(weight: DualWeight, term: float) -> float:
    weight.observe(torch.tensor(term, dtype=torch.float64))
    weight.step()
    return weight.value.item()


# ---------------------------------------------------------------------------------------------- the rule


def test_lambda_rises_above_the_budget_and_falls_to_zero_below_it():
    weight = dual(budget=0.125, dual_lr=2.0, initial=1.0)  # binary fractions: every step below is exact
    rising = [feed(weight, 0.625) for _ in range(5)]  # 0.5 above the budget: + 2 * 0.5 per step
    assert rising == [2.0, 3.0, 4.0, 5.0, 6.0]
    falling = [feed(weight, 0.0) for _ in range(30)]  # 0.125 below: - 0.25 per step, then held at 0
    assert falling[:24] == [6.0 - 0.25 * k for k in range(1, 25)] and falling[24:] == [0.0] * 6
    assert feed(weight, 0.375) == 0.5  # and it rises again from 0 when the term exceeds the budget
    assert weight.value.dtype == torch.float64 and weight.value.dim() == 0


def test_lambda_stays_within_its_bounds_under_extreme_terms():
    weight = dual(budget=0.0, dual_lr=1e3, max_weight=25.0)
    assert feed(weight, 1e6) == 25.0 and feed(weight, 3.4e38) == 25.0  # capped
    weight = dual(budget=1e6, dual_lr=1e3)
    assert feed(weight, 0.0) == 0.0 and feed(weight, 0.0) == 0.0  # never below 0
    weight = dual(budget=0.5, dual_lr=1e-12, initial=10.0)
    assert 10.0 - 1e-9 < feed(weight, 0.0) < 10.0  # a tiny step moves it a little, within the bounds
    for term in (0.0, 1e-30, 4.0, 1e30, 0.0, 2.0):
        assert 0.0 <= feed(dual(dual_lr=1e8, max_weight=50.0), term) <= 50.0


def test_a_relative_budget_is_the_first_epochs_mean_term_and_lambda_waits_for_it():
    weight = dual(budget=2.0, relative=True, dual_lr=0.5, initial=3.0)
    assert weight.budget() is None and weight.calibrating
    assert [feed(weight, t) for t in (0.1, 0.2, 0.3, 0.6)] == [3.0] * 4  # the first epoch: lambda unchanged
    weight.end_epoch()
    assert not weight.calibrating
    assert weight.reference.item() == pytest.approx(0.3) and weight.budget().item() == pytest.approx(0.6)
    # the step is dual_lr / reference: 0.5 / 0.3 per unit of the term above 2 x 0.3
    assert feed(weight, 0.9) == pytest.approx(3.0 + 0.5 / 0.3 * 0.3)
    assert feed(weight, 0.0) == pytest.approx(3.5 - 0.5 / 0.3 * 0.6)
    weight.end_epoch()  # later epochs leave the reference alone
    assert weight.reference.item() == pytest.approx(0.3)


def test_the_defaults_and_the_regulariser_spec():
    regulariser = build_regulariser({"kind": "ot", "adaptive": {}})
    assert regulariser.dual.settings == AdaptiveSettings(DEFAULT_BUDGET, True, DEFAULT_DUAL_LR, DEFAULT_MAX_WEIGHT)
    assert (DEFAULT_BUDGET, DEFAULT_DUAL_LR, DEFAULT_MAX_WEIGHT) == (1.0, 0.2, 100.0)
    assert regulariser.dual.value.item() == 10.0  # the initial lambda is the regulariser's weight
    assert build_regulariser({"kind": "ot", "adaptive": True}).dual.settings == regulariser.dual.settings
    assert build_regulariser({"kind": "ot", "adaptive": None}).dual is None
    assert build_regulariser({"kind": "ot", "weight": 0, "adaptive": {"relative": False}}).dual.value.item() == 0.0
    with pytest.raises(UserError, match="'weight' must be > 0"):  # a fixed lambda of 0 is still refused
        build_regulariser({"kind": "ot", "weight": 0})


def inputs(drift: float, batch=4, dim=8, seed=0) -> RegulariserInputs:
    """Frozen features and fine-tuned ones moved from them by about ``drift`` (0: the same features)."""
    g = torch.Generator().manual_seed(seed)
    frozen_image = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    frozen_text = F.normalize(torch.randn(3, dim, generator=g), dim=-1)
    image, text = frozen_image, frozen_text
    if drift:
        image = F.normalize(frozen_image + drift * torch.randn(batch, dim, generator=g), dim=-1)
        text = F.normalize(frozen_text + drift * torch.randn(3, dim, generator=g), dim=-1)
    return RegulariserInputs(
        image=image,
        frozen_image=frozen_image,
        class_text=text,
        frozen_class_text=frozen_text,
        labels=torch.tensor([0, 1, 2, 0]),
    )


def test_the_ot_regulariser_weighs_its_term_by_lambda_before_the_update():
    regulariser = OTRegulariser(weight=4.0, adaptive={"budget": 0.05, "relative": False, "dual_lr": 10.0})
    far, near = inputs(drift=1.0), inputs(drift=0.0)
    term = OTRegulariser(weight=1.0)(far).item()
    assert term > 0.05
    loss = regulariser(far)
    assert loss.item() == pytest.approx(4.0 * term)  # this step's loss: the lambda before its update
    regulariser.after_step()
    assert regulariser.dual.value.item() == pytest.approx(4.0 + 10.0 * (term - 0.05))
    assert regulariser(near).item() == 0.0  # the same features: no transport cost, below the budget
    regulariser.after_step()
    assert regulariser.dual.value.item() == pytest.approx(4.0 + 10.0 * (term - 0.05) - 0.5)
    for _ in range(100):
        regulariser(near)
        regulariser.after_step()
    assert regulariser.dual.value.item() == 0.0
    regulariser.after_step()  # nothing observed since the last update: no change
    assert regulariser.dual.value.item() == 0.0


def test_the_loss_backpropagates_after_lambda_moved():
    """lambda is replaced, not changed in place, so the step's graph keeps the lambda it used."""
    regulariser = OTRegulariser(adaptive={"budget": 0.0, "relative": False})
    batch = inputs(drift=1.0)
    image = batch.image.requires_grad_()
    loss = regulariser(batch)
    regulariser.after_step()
    loss.backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


# ---------------------------------------------------------------------------------------------- in training


def method(adaptive, weight=10.0):
    return get_method("prompt_ot", {"prompts": SHALLOW, "regulariser": {"weight": weight, "adaptive": adaptive}})


def config(seed=1, **kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 0.01, "seed": seed, "device": "cpu", **kw})


def run(tiny, adaptive, seed=1, **kw):
    clip, tokenizer, _ = tiny
    m = method(adaptive)
    return train(
        m,
        build_model(m, clip, tokenizer, seed=seed),
        ToyImages(6, len(CLASSES)),
        CLASSES,
        config(seed, epochs=kw.pop("epochs", 3)),
        **kw,
    )


def test_training_records_lambda_its_term_and_budget_per_epoch(tiny):
    rising = run(tiny, {"budget": 0.0, "relative": False, "dual_lr": 5.0}, epochs=2).history
    assert rising[0]["lambda"] > 10.0 and rising[1]["lambda"] > rising[0]["lambda"]  # every term is above 0
    assert all(r["ot_budget"] == 0.0 and r["ot_term"] > 0 for r in rising)
    falling = run(tiny, {"budget": 100.0, "relative": False, "dual_lr": 1.0}, epochs=2).history
    assert falling[0]["lambda"] == 0.0 and falling[1]["regulariser"] == 0.0  # 4 steps of -100: at 0, no OT loss
    assert falling[1]["loss"] == falling[1]["ce"]
    relative = run(tiny, {"budget": 1.0}, epochs=2).history
    assert relative[0]["lambda"] == 10.0  # the first epoch only measures the term
    assert relative[0]["ot_budget"] == pytest.approx(relative[0]["ot_term"], rel=1e-6)  # equal batches: same mean
    assert relative[1]["lambda"] != 10.0 and relative[1]["ot_budget"] == relative[0]["ot_budget"]
    fixed = train(*_fixed(tiny), config(epochs=2)).history
    assert "lambda" not in fixed[0] and "ot_budget" not in fixed[0]  # fixed-lambda records are as they were


def _fixed(tiny):
    clip, tokenizer, _ = tiny
    m = get_method("prompt_ot", {"prompts": SHALLOW})
    return m, build_model(m, clip, tokenizer, seed=1), ToyImages(6, len(CLASSES)), CLASSES


@pytest.mark.parametrize(
    "adaptive",
    [{"budget": 1.0, "relative": True, "dual_lr": 2.0}, {"budget": 0.1, "relative": False, "dual_lr": 20.0}],
    ids=["relative", "absolute"],
)
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_end(tiny, tmp_path, adaptive):
    from safetensors.torch import load_file

    full = run(tiny, adaptive, checkpoint_dir=tmp_path / "a")
    first = run(tiny, adaptive, checkpoint_dir=tmp_path / "b", stop_after_epoch=1)
    assert len(first.history) == 1
    saved = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert saved["regulariser/lambda"].item() == first.history[0]["lambda"]
    assert ("regulariser/reference" in saved) == adaptive["relative"]
    resumed = run(tiny, adaptive, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 1
    assert len({r["lambda"] for r in full.history}) >= 2  # lambda did move
    for name, value in full.prompts.items():
        assert torch.equal(value, resumed.prompts[name]), name
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    ends = [load_file(str(tmp_path / d / "checkpoint.safetensors")) for d in ("a", "b")]
    assert ends[0].keys() == ends[1].keys()
    for key in ends[0].keys() - {"rng/torch_cpu"}:  # the process's generator, which the runs before this one moved
        assert torch.equal(ends[0][key], ends[1][key]), key


def test_the_fingerprint_holds_the_adaptive_settings(tiny, tmp_path):
    fingerprint = lambda adaptive: run_fingerprint(method(adaptive), config(), CLASSES, "tiny")  # noqa: E731
    assert fingerprint({"budget": 1.0}) != fingerprint({"budget": 2.0}) != fingerprint(None)
    assert fingerprint({"dual_lr": 0.2}) != fingerprint({"dual_lr": 0.3})
    # a fixed lambda's fingerprint is what it was before adaptive lambdas existed: its checkpoints still resume
    import dataclasses
    import hashlib

    fixed = get_method("prompt_ot", {"prompts": SHALLOW})
    train_keys = {
        k: v
        for k, v in dataclasses.asdict(config()).items()
        if k not in ("device", "num_workers", "deterministic", "augment_on", "text_chunk")
    }
    legacy = json.dumps(
        {"method": fixed.to_dict(), "train": train_keys, "classes": CLASSES, "backbone": "tiny"}, sort_keys=True
    )
    assert run_fingerprint(fixed, config(), CLASSES, "tiny") == hashlib.sha256(legacy.encode()).hexdigest()[:16]
    run(tiny, {"budget": 1.0}, checkpoint_dir=tmp_path, stop_after_epoch=1)
    with pytest.raises(UserError, match="belongs to another run"):
        run(tiny, {"budget": 2.0}, checkpoint_dir=tmp_path)


def test_each_packed_run_keeps_its_own_lambda(tiny):
    clip, tokenizer, _ = tiny
    adaptive = {"budget": 0.5, "dual_lr": 3.0}

    def spec(seed):
        m = method(adaptive)
        return RunSpec(
            m, build_model(m, clip, tokenizer, seed=seed), ToyImages(6, len(CLASSES)), CLASSES, config(seed, epochs=2)
        )

    packed = train_packed([spec(1), spec(2)])
    alone = [train_packed([spec(seed)])[0] for seed in (1, 2)]
    for p, a in zip(packed, alone):
        for rp, ra in zip(p.history, a.history):
            for key in ("lambda", "ot_term", "ot_budget"):
                assert rp[key] == pytest.approx(ra[key], rel=1e-5), key
    assert packed[0].history[-1]["lambda"] != packed[1].history[-1]["lambda"]


class DeviceToy(ToyImages):
    """ToyImages with the trainer's on-device path (``device_batch``), as the store's views have."""

    def device_batch(self, indices, device):
        from prompt_ot.devices import to_device

        views = [self.images[i].flip(-1) if (self.epoch + i) % 2 else self.images[i] for i in indices]  # __getitem__'s
        images = torch.stack(views)
        labels = self.labels[list(indices)]  # not int(label) per item: that would be a host read
        return to_device(images, device), to_device(labels, device)


def _device_runs(tiny, device, adaptives):
    from prompt_ot.train import _Run

    clip, tokenizer, _ = tiny
    runs = []
    for seed, adaptive in enumerate(adaptives, start=1):
        m = get_method("prompt_ot", {"prompts": SHALLOW, "regulariser": {"adaptive": adaptive, "backend": "torch"}})
        spec = RunSpec(
            m,
            build_model(m, clip, tokenizer, seed=seed),
            DeviceToy(6, len(CLASSES)),
            CLASSES,
            config(seed, augment_on="device", device=str(device)),
        )
        runs.append(_Run(spec, device))
    for run_ in runs:
        run_.begin_epoch(0, device)
    assert all(r.on_device_views and r.dual is not None for r in runs)
    return runs


ADAPTIVE_PACK = [{"budget": 1.0}, {"budget": 0.01, "relative": False, "dual_lr": 5.0}]


def test_an_adaptive_step_reads_nothing_on_the_host(tiny):
    """The CPU twin of the GPU test below: a packed step with an adaptive lambda, relative (while it measures the
    first epoch and after) and absolute, records no host read (``HostReads``), the dual update included."""
    from prompt_ot.train import _packed_step
    from tests.support.host_reads import HostReads

    device = torch.device("cpu")
    runs = _device_runs(tiny, device, ADAPTIVE_PACK)
    _packed_step(runs, 0, device, "fp32", {}, True)  # the first step builds the layout and permutation table
    with HostReads() as reads:
        _packed_step(runs, 0, device, "fp32", {}, True)
    assert reads.found == []
    for run_ in runs:
        run_.dual.end_epoch()  # the epoch boundary: the relative run now has its reference
        run_.begin_epoch(1, device)
    assert runs[0].dual.reference is not None
    before = [r.dual.value.clone() for r in runs]
    with HostReads() as reads:
        for _ in range(2):
            _packed_step(runs, 1, device, "fp32", {}, True)
    assert reads.found == []
    assert all(not torch.equal(b, r.dual.value) for b, r in zip(before, runs))  # both lambdas moved


@pytest.mark.gpu
def test_an_adaptive_gpu_step_never_waits_for_the_device(tiny):
    """On a GPU a packed step with adaptive lambdas runs under CUDA's sync debug mode "error"."""
    from prompt_ot.train import _packed_step

    device = torch.device("cuda")
    try:
        runs = _device_runs(tiny, device, ADAPTIVE_PACK)
        for epoch in (0, 1):
            _packed_step(runs, epoch, device, "bf16", {}, True)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(2):
                    _packed_step(runs, epoch, device, "bf16", {}, True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            for run_ in runs:
                run_.dual.end_epoch()
                run_.begin_epoch(epoch + 1, device)
        assert all(r.dual.value.device.type == "cuda" and 0 <= r.dual.value.item() <= 100 for r in runs)
        assert runs[0].dual.reference.device.type == "cuda"
    finally:
        tiny[0].to("cpu")


# ---------------------------------------------------------------------------------------------- params


def demo_params() -> dict:
    return yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())


@pytest.mark.parametrize(
    "adaptive, message",
    [
        ({"budget": -0.5}, r"'adaptive.budget' must be >= 0, got -0.5"),
        ({"dual_lr": 0}, r"'adaptive.dual_lr' must be > 0, got 0"),
        ({"dual_lr": -1.0}, r"'adaptive.dual_lr' must be > 0"),
        ({"max_weight": 5.0}, r"'adaptive.max_weight' = 5 is below the initial lambda 'weight' = 10"),
        (
            {"budget": 1.0, "dual_rate": 0.1},
            r"unknown regulariser parameter\(s\) adaptive.dual_rate; known: "
            r"adaptive.budget, adaptive.relative, adaptive.dual_lr, adaptive.max_weight",
        ),
        ({"relative": "yes"}, r"'adaptive.relative' must be true or false"),
        ({"budget": "small"}, r"'adaptive.budget' must be a finite number"),
        ([1.0], r"'adaptive' must be a mapping"),
    ],
)
def test_bad_adaptive_settings_are_refused_naming_the_key(adaptive, message):
    params = demo_params()
    params["variants"]["prompt_ot_adaptive"]["regulariser"] = {"adaptive": adaptive}
    with pytest.raises(UserError, match=r"variants\.prompt_ot_adaptive: .*" + message):
        validate_params(params, "demo/params.yaml")


def test_the_demo_runs_the_adaptive_variant_and_holds_the_lambda_sweep_ready():
    params = validate_params(demo_params())
    assert "prompt_ot_adaptive" in params["methods"]
    adaptive = resolve_method(params, "prompt_ot_adaptive").regulariser
    assert adaptive["weight"] == 10.0 and adaptive["adaptive"] == {
        "budget": 1.0,
        "relative": True,
        "dual_lr": 0.2,
        "max_weight": 100.0,
    }
    sweep = ["prompt_ot_lambda1", "prompt_ot_lambda3", "prompt_ot_lambda30"]
    assert [resolve_method(params, name).regulariser["weight"] for name in sweep] == [1.0, 3.0, 30.0]
    assert not set(sweep) & set(params["methods"])  # ready, not run by default
    params["methods"] += sweep  # what the comment in demo/params.yaml says to do
    validate_params(params)


# ---------------------------------------------------------------------------------------------- metrics, report


def write_run(
    folder: Path, method: str, dataset: str, seed: int, base: float, novel: float, weight: float, adaptive: bool = False
) -> Path:
    from prompt_ot.results import RunMetrics, write_metrics

    path = folder / f"{method}-{dataset}-{seed}.json"
    write_metrics(
        path,
        RunMetrics(
            "base2novel",
            method,
            dataset,
            seed,
            16,
            "tiny-vit",
            {"base": base, "novel": novel},
            base_method="prompt_ot",
            regulariser_weight=weight,
            regulariser_adaptive=adaptive,
        ),
    )
    return path


def test_metrics_files_say_adaptive_only_when_it_is(tmp_path):
    from prompt_ot.results import read_metrics

    fixed = json.loads(write_run(tmp_path, "prompt_ot", "dtd", 1, 70, 60, 10.0).read_text())
    assert "regulariser_adaptive" not in fixed  # fixed-lambda files are unchanged
    path = write_run(tmp_path, "prompt_ot_adaptive", "dtd", 1, 70, 60, 12.5, adaptive=True)
    assert json.loads(path.read_text())["regulariser_adaptive"] is True
    assert read_metrics(path).regulariser_adaptive and read_metrics(path).regulariser_weight == 12.5


@pytest.fixture()
def sweep_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    paths = []
    for method_, weight in (
        ("prompt_ot_lambda1", 1.0),
        ("prompt_ot_lambda3", 3.0),
        ("prompt_ot", 10.0),
        ("prompt_ot_lambda30", 30.0),
    ):
        for seed in (1, 2):
            paths.append(write_run(runs, method_, "dtd", seed, 60 + weight, 80 - weight, weight))
    for seed, final in ((1, 12.0), (2, 16.0)):  # lambda when tested differs per run; the row shows their mean
        paths.append(write_run(runs, "prompt_ot_adaptive", "dtd", seed, 75.0 + seed, 72.0, final, adaptive=True))
    return paths


def test_the_ablation_table_holds_the_adaptive_row(tmp_path, sweep_runs):
    import pandas as pd

    from prompt_ot.report.build import build_report
    from prompt_ot.report.published import read_published

    out = tmp_path / "out"
    build_report(sweep_runs, read_published(None), out, figures=False)
    average = pd.read_csv(out / "tables" / "base2novel_average.csv")
    assert list(average.method) == [
        "prompt_ot",
        "prompt_ot_lambda1",
        "prompt_ot_lambda3",
        "prompt_ot_lambda30",
        "prompt_ot_adaptive",
    ]  # the adaptive row after the fixed lambdas
    adaptive = average[average.method == "prompt_ot_adaptive"].iloc[0]
    assert adaptive["name"] == "Prompt-OT (ours), adaptive λ" and math.isnan(adaptive["lambda"])
    assert adaptive["adaptive_lambda"] == pytest.approx(14.0) and adaptive["base_mean"] == pytest.approx(76.5)
    ablation = pd.read_csv(out / "tables" / "ablation.csv")
    block = ablation[ablation.block == "Regularisation strength"]
    assert set(block.method) == {
        "prompt_ot",
        "prompt_ot_lambda1",
        "prompt_ot_lambda3",
        "prompt_ot_lambda30",
        "prompt_ot_adaptive",
    }
    assert "adaptive $\\lambda$" in (out / "tables" / "ablation.tex").read_text()


def test_the_lambda_sweep_figure_marks_the_adaptive_run(tmp_path, sweep_runs, monkeypatch):
    from prompt_ot.report.build import build_report
    from prompt_ot.report.published import read_published

    drawn = drawn_figures(monkeypatch)
    out = tmp_path / "out"
    build_report(sweep_runs, read_published(None), out, figures=True)
    assert (out / "figures" / "lambda_sweep_prompt_ot.pdf").read_bytes()[:4] == b"%PDF"
    (ax,) = drawn["lambda_sweep_prompt_ot"].axes
    curves = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in curves] == [[1.0, 3.0, 10.0, 30.0]] * 3  # base, novel, HM
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    assert len(stars) == 3 and all(list(s.get_xdata()) == [pytest.approx(14.0)] for s in stars)
    assert sorted(s.get_ydata()[0] for s in stars)[-1] == pytest.approx(76.5)  # base of the adaptive row
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Prompt-OT (ours), adaptive λ: mean λ when tested 14" in labels
    # without fixed lambdas to sweep there is no figure, adaptive run or not
    drawn.clear()
    unswept = [p for p in sweep_runs if "lambda" not in p.name]
    build_report(unswept, read_published(None), tmp_path / "few", figures=True)
    assert "lambda_sweep_prompt_ot" not in drawn


# ---------------------------------------------------------------------------------------------- through the CLI


def test_the_train_and_evaluate_stages_report_lambda_at_the_tested_epoch(tmp_path):
    """An adaptive variant through the CLI: the train log and train.json hold lambda per epoch, and the metrics file
    the lambda after the tested epoch (here epoch 1 of 2) with ``regulariser_adaptive``."""
    from prompt_ot.cli import main
    from tests.support.cli import TINY_CPU, argv, evaluate_argv, manifest_and_cache, train_argv
    from tests.support.data import make_fixture
    from tests.support.params import shrunk_params

    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 2))
    params = shrunk_params("paper")
    params["methods"] = ["prompt_ot_adaptive"]
    params["variants"] = {
        "prompt_ot_adaptive": {
            "method": "prompt_ot",
            "regulariser": {"adaptive": {"budget": 0.0, "relative": False, "dual_lr": 5.0}},
            "train": {"eval_epoch": 1},
        }
    }
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    manifest, train_cache, tests = tmp_path / "manifest.json", tmp_path / "train_cache", tmp_path / "test"
    manifest_and_cache(root, manifest, train_cache, params=p)
    assert main(argv("cache", "test", "dtd", params=p, root=root, out=tests / "dtd", **TINY_CPU)) == 0
    out = tmp_path / "run"
    assert main(train_argv(p, "prompt_ot_adaptive", manifest, train_cache, out)) == 0
    history = json.loads((out / "train.json").read_text())["history"]
    assert 10.0 < history[0]["lambda"] < history[1]["lambda"]  # budget 0: every step raises it
    assert f"lambda {history[0]['lambda']:.4g}" in (out / "train.log").read_text()
    evaluate = evaluate_argv(p, "prompt_ot_adaptive", out / "prompts.safetensors", tests, out / "metrics.json")
    assert main(evaluate) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regulariser_adaptive"] is True and metrics["epoch"] == 1
    assert metrics["regulariser_weight"] == history[0]["lambda"]
