"""The trainer: the recipe's schedule, exact resumption, determinism, the frozen-feature hook,
precision modes, and that training actually learns."""

import math

import pytest
import torch

from prompt_ot.errors import UserError
from prompt_ot.evaluate import evaluate, harmonic_mean
from prompt_ot.methods import METHODS, build_model, get_method
from prompt_ot.train import TrainConfig, epoch_batches, learning_rate, train
from tests.support.models import ToyImages, tiny_clip

CLASSES = ["red thing", "green thing", "blue thing"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def small_config(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 0.01, "seed": 1, "device": "cpu", **kw})


def run(tiny, method_name="prompt_ot", config=None, **kw):
    clip, tokenizer, _ = tiny
    method = get_method(
        method_name, {"prompts": {"text_depth": 2, "vision_depth": 2}} if method_name != "coop" else None
    )
    model = build_model(method, clip, tokenizer, seed=(config or small_config()).seed)
    data = ToyImages(6, len(CLASSES))
    return model, train(method, model, data, CLASSES, config or small_config(), **kw)


def dassl_rates(epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """The rate of each epoch as Dassl's loop makes it, restated with torch's own CosineAnnealingLR: the optimiser
    runs at the constant warm-up rate for the warm-up epochs; when they end the wrapped cosine schedule (T_max =
    all epochs, built before the warm-up, its count restarted) takes over at the full rate and steps once per
    epoch after that."""
    optimiser = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=float(epochs))
    if warmup_epochs:
        optimiser.param_groups[0]["lr"] = warmup_lr
    rates = []
    for epoch in range(epochs):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        if epoch + 1 == warmup_epochs:
            optimiser.param_groups[0]["lr"] = cosine.get_last_lr()[0]
        elif epoch + 1 > warmup_epochs:
            cosine.step()
    return rates


@pytest.mark.parametrize("epochs", [40, 20, 5, 2])
@pytest.mark.parametrize("lr, warmup_lr", [(0.005, 1e-4), (0.002, 1e-5)])  # Prompt-OT's and the other recipes'
@pytest.mark.parametrize("warmup_epochs", [1, 0])
def test_the_schedule_is_dassls_warm_up_then_cosine(epochs, lr, warmup_lr, warmup_epochs):
    config = TrainConfig(epochs=epochs, lr=lr, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr)
    ours = [learning_rate(config, e) for e in range(epochs)]
    # the formula: lr(e) = warm-up rate in the warm-up, then lr/2 (1 + cos(pi (e - warm-up epochs) / epochs))
    formula = [
        warmup_lr if e < warmup_epochs else 0.5 * lr * (1 + math.cos(math.pi * (e - warmup_epochs) / epochs))
        for e in range(epochs)
    ]
    assert ours == pytest.approx(formula, rel=1e-12, abs=0)
    assert ours == pytest.approx(dassl_rates(epochs, lr, warmup_epochs, warmup_lr), rel=1e-9, abs=0)


def test_the_papers_schedule_in_numbers():
    config = TrainConfig()  # Prompt-OT's: 40 epochs, lr 0.005, one warm-up epoch at 1e-4
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size, config.epochs) == (
        0.005,
        0.9,
        5e-4,
        4,
        40,
    )
    assert learning_rate(config, 0) == 1e-4
    assert learning_rate(config, 1) == 0.005  # the epoch after the warm-up runs at the full rate
    assert learning_rate(config, 2) == pytest.approx(0.5 * 0.005 * (1 + math.cos(math.pi / 40)))
    assert learning_rate(config, 39) == pytest.approx(3.08e-5, rel=1e-3)  # the cosine never reaches 0
    lrs = [learning_rate(config, e) for e in range(1, 40)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_batches_drop_the_last_partial_batch_and_depend_on_seed_and_epoch():
    batches = epoch_batches(18, 4, seed=1, epoch=0)
    assert len(batches) == 4 and all(len(b) == 4 for b in batches)
    assert len(set(sum(batches, []))) == 16
    assert batches == epoch_batches(18, 4, seed=1, epoch=0)
    assert batches != epoch_batches(18, 4, seed=1, epoch=1)
    assert batches != epoch_batches(18, 4, seed=2, epoch=0)


def test_a_set_smaller_than_one_batch_is_one_batch_as_in_dassl():
    """Dassl's training loader drops the last batch only when the set holds at least one full batch (e.g. KgCoOp's
    batch of 128 on EuroSAT's 80 base images trains one batch of 80 per epoch)."""
    batches = epoch_batches(80, 128, seed=1, epoch=3)
    assert len(batches) == 1 and sorted(batches[0]) == list(range(80))
    assert epoch_batches(128, 128, seed=1, epoch=3)[0] != list(range(128)) and len(epoch_batches(129, 128, 1, 0)) == 1


def test_resume_after_kill_gives_exactly_the_uninterrupted_weights(tiny, tmp_path):
    _, full = run(tiny, checkpoint_dir=tmp_path / "a")
    _, first = run(tiny, checkpoint_dir=tmp_path / "b", stop_after_epoch=1)
    assert len(first.history) == 1
    _, resumed = run(tiny, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 1
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for name, value in full.prompts.items():
        assert torch.equal(value, resumed.prompts[name]), name
    for a, b in zip(full.history, resumed.history):
        assert a["loss"] == b["loss"]


def test_checkpoint_of_another_method_is_refused(tiny, tmp_path):
    run(tiny, "prompt_ot", checkpoint_dir=tmp_path, stop_after_epoch=1)
    with pytest.raises(UserError, match="belongs to another run"):
        run(tiny, "ivlp", checkpoint_dir=tmp_path)


def test_same_seed_same_prompts_other_seed_differs(tiny):
    _, a = run(tiny)
    _, b = run(tiny)
    _, c = run(tiny, config=small_config(seed=2))
    assert all(torch.equal(a.prompts[k], b.prompts[k]) for k in a.prompts)
    assert any(not torch.equal(a.prompts[k], c.prompts[k]) for k in a.prompts)


def test_supplied_frozen_features_skip_the_frozen_forward(tiny):
    clip, tokenizer, _ = tiny
    method = get_method("prompt_ot", {"prompts": {"text_depth": 2, "vision_depth": 2}})
    data = ToyImages(6, len(CLASSES))
    reference_model = build_model(method, clip, tokenizer)
    reference = train(method, reference_model, data, CLASSES, small_config())

    frozen = build_model(get_method("zeroshot"), clip, tokenizer)
    calls = []

    def provider(epoch, indices):
        calls.append((epoch, indices.tolist()))
        data.set_epoch(epoch)
        images = torch.stack([data[int(i)][0] for i in indices])
        return frozen.frozen_image_features(images)

    model = build_model(method, clip, tokenizer)

    def forbidden(images):
        raise AssertionError("frozen image forward ran although features were supplied")

    model.frozen_image_features = forbidden
    supplied = train(method, model, ToyImages(6, len(CLASSES)), CLASSES, small_config(), frozen_image_features=provider)
    assert len(calls) == 3 * (18 // 4)
    for k in reference.prompts:
        torch.testing.assert_close(supplied.prompts[k], reference.prompts[k], rtol=0, atol=1e-6)


def test_bf16_autocast_runs_and_stays_finite(tiny):
    model, result = run(tiny, config=small_config(epochs=2, precision="bf16"))
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in result.prompts.values())
    assert all(p.dtype == torch.float32 for p in model.clip.parameters())  # autocast leaves the weights alone


@pytest.fixture(scope="module")
def tiny_half():
    from prompt_ot.models.backbone import load_backbone

    return load_backbone("tiny-vit", precision="fp16")


def test_fp16_is_the_released_half_precision(tiny_half, tmp_path, monkeypatch):
    """PREC fp16 as the released code runs it: CLIP's weights in half as OpenAI's clip.load casts them (linear,
    convolution, attention and projection weights; embeddings, layer norms and the logit scale stay float32),
    half prompts, plain SGD on them (half momentum buffers) and no loss scaling."""
    clip, _, _ = tiny_half
    for name, module in clip.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert module.weight.dtype == torch.float16, name
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)):
            assert module.weight.dtype == torch.float32, name
    assert clip.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert clip.visual.proj.dtype == clip.text_projection.dtype == torch.float16
    assert clip.logit_scale.dtype == clip.positional_embedding.dtype == torch.float32

    def no_scaler(*args, **kwargs):
        raise AssertionError("fp16 training made a loss scaler")

    monkeypatch.setattr(torch.amp, "GradScaler", no_scaler)
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", no_scaler, raising=False)
    model, result = run(tiny_half, config=small_config(epochs=2, precision="fp16"), checkpoint_dir=tmp_path)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float16}
    assert all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in result.prompts.values())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as fh:
        momentum = [fh.get_tensor(k) for k in fh.keys() if k.startswith("momentum/")]
        assert momentum and all(m.dtype == torch.float16 for m in momentum)
        assert "scaler" not in (fh.metadata() or {})
    # and it resumes exactly, in half precision too
    _, first = run(
        tiny_half, config=small_config(epochs=2, precision="fp16"), checkpoint_dir=tmp_path / "b", stop_after_epoch=1
    )
    _, resumed = run(tiny_half, config=small_config(epochs=2, precision="fp16"), checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 1
    assert all(torch.equal(resumed.prompts[k], result.prompts[k]) for k in result.prompts)


def test_a_precision_that_does_not_match_the_backbone_is_refused(tiny, tiny_half):
    with pytest.raises(UserError, match="precision fp16 needs a backbone loaded at fp16"):
        run(tiny, config=small_config(precision="fp16"))
    with pytest.raises(UserError, match="precision fp32 needs a backbone loaded at fp32"):
        run(tiny_half, config=small_config(precision="fp32"))


def test_the_frozen_template_of_a_method_or_variant_takes_effect(tiny):
    """The frozen class texts S_c are encoded from the template a method, recipe or variant names (KgCoOp's is the
    dataset's); another template gives other targets and so other prompts."""
    clip, tokenizer, _ = tiny
    method = get_method("kgcoop")
    assert method.frozen_template == "dataset"
    results = {}
    for template in ("a photo of a {}.", "a blurry photo of a {}, a type of thing."):
        model = build_model(method, clip, tokenizer, seed=1)
        results[template] = train(
            method, model, ToyImages(4, 3), CLASSES, small_config(epochs=1, warmup_epochs=0), frozen_template=template
        )
        assert torch.equal(model.frozen_class_tokens, tokenizer([template.format(c) for c in CLASSES]))
    first, second = results.values()
    assert first.history[0]["regulariser"] != second.history[0]["regulariser"]
    variant = get_method("prompt_ot", {"frozen_template": "itap of a {}."})
    model = build_model(variant, clip, tokenizer)
    train(
        variant, model, ToyImages(4, 3), CLASSES, small_config(epochs=1, warmup_epochs=0)
    )  # no template given: the method's own
    assert torch.equal(model.frozen_class_tokens, tokenizer([f"itap of a {c}." for c in CLASSES]))


def test_training_learns_and_evaluation_counts_correctly(tiny):
    clip, tokenizer, _ = tiny
    method = get_method("ivlp", {"prompts": {"text_depth": 2, "vision_depth": 2}})
    model = build_model(method, clip, tokenizer)
    data = ToyImages(8, len(CLASSES), seed=0)
    before = evaluate(model, data, CLASSES)
    result = train(method, model, data, CLASSES, small_config(epochs=8, lr=0.05, warmup_epochs=0))
    after = evaluate(model, data, CLASSES)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after.accuracy >= before.accuracy + 20  # a random backbone learns slowly; chance is 33%
    assert after.accuracy == pytest.approx(100 * (after.predictions == after.labels).float().mean().item())
    assert after.n == len(data)


def test_zeroshot_does_not_train(tiny):
    clip, tokenizer, _ = tiny
    method = get_method("zeroshot")
    model = build_model(method, clip, tokenizer)
    result = train(method, model, ToyImages(2, 3), CLASSES, small_config())
    assert result.prompts == {} and result.history == []


def test_method_registry_has_the_papers_defaults():
    assert list(METHODS)[:11] == [
        "zeroshot",
        "coop",
        "cocoop",
        "ivlp",
        "maple",
        "promptsrc",
        "kgcoop",
        "pointwise_l1",
        "prompt_ot",
        "prompt_ot_vision",
        "prompt_ot_text",
    ]
    assert get_method("promptsrc").regulariser == {
        "kind": "promptsrc",
        "image_weight": 10.0,
        "text_weight": 25.0,
        "logit_weight": 1.0,
    }
    assert get_method("maple").prompts.coupled and get_method("cocoop").prompts.meta_net == 16
    ot = get_method("prompt_ot").regulariser
    assert ot == {"kind": "ot", "modality": "joint", "solver": "exact", "weight": 10.0, "eta": 0.5}
    assert get_method("prompt_ot_vision").regulariser["modality"] == "vision"
    assert get_method("kgcoop").regulariser == {"kind": "kgcoop", "weight": 8.0}
    p = get_method("prompt_ot").prompts
    assert (p.text_ctx, p.text_depth, p.vision_ctx, p.vision_depth, p.ctx_init) == (4, 12, 4, 12, "a photo of a")
    with pytest.raises(UserError, match="unknown method 'coprompt'.*prompt_ot"):
        get_method("coprompt")
    with pytest.raises(UserError, match="unknown prompt setting"):
        get_method("ivlp", {"prompts": {"depth": 3}})
    assert get_method("prompt_ot", {"regulariser": {"weight": 1.0}}).regulariser["weight"] == 1.0


def test_a_new_regulariser_kind_is_tried_through_a_params_variant(tiny, monkeypatch):
    """What a user does to try a regulariser: subclass ``Regulariser``, register its kind, name a variant in
    params.yaml that puts it on a method's prompts; it is built with its own arguments, checked, and trained."""
    from prompt_ot import losses
    from prompt_ot.config import resolve_method
    from prompt_ot.losses import Regulariser, RegulariserInputs, build_regulariser

    calls = []

    class TextAnchor(Regulariser):
        """weight * mean squared distance of the prompted class texts to the frozen ones."""

        def __init__(self, weight: float = 1.0):
            super().__init__()
            self.weight = losses.check_positive("weight", weight)

        def forward(self, inputs: RegulariserInputs) -> torch.Tensor:
            calls.append(inputs.class_text.shape)
            return self.weight * (inputs.class_text - inputs.frozen_class_text).pow(2).sum(-1).mean()

    monkeypatch.setitem(losses.REGULARISERS, "text_anchor", TextAnchor)
    params = {
        "variants": {
            "ivlp_anchor": {
                "method": "ivlp",
                "regulariser": {"kind": "text_anchor", "weight": 2.0},
                "prompts": {"text_depth": 2, "vision_depth": 2},
            },
            "ot_to_l1": {"method": "prompt_ot", "regulariser": {"kind": "pointwise_l1", "image_weight": 1.0}},
            "bad": {"method": "ivlp", "regulariser": {"kind": "text_anchor", "weight": -1}},
        }
    }
    method = resolve_method(params, "ivlp_anchor")
    assert method.regulariser == {"kind": "text_anchor", "weight": 2.0}
    assert isinstance(build_regulariser(method.regulariser), TextAnchor)
    # another kind on a method that has one starts from that kind's arguments, not the old kind's
    assert resolve_method(params, "ot_to_l1").regulariser == {"kind": "pointwise_l1", "image_weight": 1.0}
    with pytest.raises(UserError, match="variants.bad.*weight"):
        resolve_method(params, "bad")
    with pytest.raises(UserError, match="give the regulariser a 'kind'"):
        get_method("ivlp", {"regulariser": {"weight": 1.0}})

    clip, tokenizer, _ = tiny
    model = build_model(method, clip, tokenizer, seed=1)
    result = train(method, model, ToyImages(4, 3), ["red", "green", "blue"], small_config(epochs=2))
    assert len(calls) == 2 * (12 // 4) and all(shape == (3, calls[0][1]) for shape in calls)
    assert all(record["regulariser"] > 0 for record in result.history)
    alone = train(
        get_method("ivlp", {"prompts": {"text_depth": 2, "vision_depth": 2}}),
        build_model(method, clip, tokenizer, seed=1),
        ToyImages(4, 3),
        ["red", "green", "blue"],
        small_config(epochs=2),
    )
    assert alone.history[-1]["regulariser"] == 0
    assert any(not torch.equal(result.prompts[k], alone.prompts[k]) for k in result.prompts)


def test_bad_recipe_values_are_user_errors(tiny):
    for bad in ({"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"precision": "fp8"}, {"warmup_epochs": 5}):
        with pytest.raises(UserError):
            run(tiny, config=small_config(**bad))


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_prompt_and_checkpoint_files_are_byte_identical_across_processes(tmp_path):
    """safetensors writes metadata in hash-map order; the saved header is canonical, so reruns give equal bytes."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from prompt_ot.checkpoint import save_prompts, load_prompts\n"
        "meta = {k: {'v': i} for i, k in enumerate('abcdefghij')}\n"
        "save_prompts(sys.argv[1], {'p': torch.arange(6.0).view(2, 3), 'q': torch.ones(4)}, meta)\n"
        "t, m = load_prompts(sys.argv[1]); assert m == meta and torch.equal(t['q'], torch.ones(4))\n"
    )
    outs = [tmp_path / f"{k}.safetensors" for k in range(3)]
    for out in outs:
        subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()


def test_deterministic_option_turns_on_deterministic_algorithms_while_training(tiny):
    import os

    seen = []

    def probe(record):
        seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))

    try:
        run(tiny, config=small_config(epochs=2, deterministic=True), on_epoch_end=probe)
        assert seen == [(True, ":4096:8")] * 2
        seen.clear()
        _, plain = run(tiny, config=small_config(epochs=2), on_epoch_end=probe)
        assert [s[0] for s in seen] == [False, False]
    finally:
        torch.use_deterministic_algorithms(False)
    # the switch changes kernels, not the recipe: a checkpoint resumes either way (not part of the fingerprint)
    _, deterministic = run(tiny, config=small_config(epochs=2, deterministic=True))
    torch.use_deterministic_algorithms(False)
    assert all(torch.equal(plain.prompts[k], deterministic.prompts[k]) for k in plain.prompts)


def test_an_ot_runs_history_says_how_far_its_plans_were_from_the_identity(tiny):
    _, optimal = run(tiny, "prompt_ot")
    assert all(0.0 <= h["plan_off_identity"] <= 1.0 for h in optimal.history)
    clip, tokenizer, _ = tiny
    control = get_method(
        "prompt_ot", {"prompts": {"text_depth": 2, "vision_depth": 2}, "regulariser": {"plan": "identity"}}
    )
    model = build_model(control, clip, tokenizer, seed=1)
    identity = train(control, model, ToyImages(6, len(CLASSES)), CLASSES, small_config())
    assert [h["plan_off_identity"] for h in identity.history] == [0.0] * 3
    _, unregularised = run(tiny, "ivlp")
    assert all("plan_off_identity" not in h for h in unregularised.history)
