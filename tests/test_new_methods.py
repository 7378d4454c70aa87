"""CoCoOp, MaPLe and PromptSRC, each held against a plain restatement of its algorithm: CoCoOp's per-image
prompts (zero meta-net = CoOp; one batched forward = a loop of full 77-token forwards), MaPLe's coupling
(vision tokens = F_k(P_k) at each depth; the vision branch's gradient reaches the text prompts), PromptSRC's
loss formula, its Gaussian aggregation weights and aggregate, and exact resumption of the aggregate."""

import math

import pytest
import torch
import torch.nn.functional as F

from prompt_ot.errors import UserError
from prompt_ot.losses import RegulariserInputs, build_regulariser
from prompt_ot.methods import build_model, get_method, gpa_weights
from prompt_ot.models.prompted import PromptConfig, PromptedCLIP
from prompt_ot.train import TrainConfig, train
from tests.support.models import ToyImages, reference_deep_vision, tiny_clip

CLASSES = ["red thing", "green thing", "blue thing"]
NAMES = ["dog", "cat", "great white shark", "a rather long class name with many words in it", "x"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def _perturb(model, scale=0.5, seed=0):
    """Prompts (and small networks) far from their initialisation, so that every part matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def config(**kw):
    return TrainConfig(**{"epochs": 4, "batch_size": 4, "lr": 0.01, "seed": 1, "device": "cpu", **kw})


# ---------------------------------------------------------------------------------------------- CoCoOp
def test_cocoop_with_a_zero_meta_net_is_coop(tiny):
    clip, tokenizer, _ = tiny
    cocoop = build_model(get_method("cocoop"), clip, tokenizer, seed=1)
    coop = build_model(get_method("coop"), clip, tokenizer, seed=1)
    with torch.no_grad():
        cocoop.meta_net[2].weight.zero_()
        cocoop.meta_net[2].bias.zero_()
    for model in (cocoop, coop):
        model.set_classnames(CLASSES)
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    image = cocoop.image_features(images)
    per_image = cocoop.conditional_class_text(image)
    assert per_image.shape == (5, len(CLASSES), image.shape[1])
    for i in range(5):
        torch.testing.assert_close(per_image[i], coop.class_text_features(), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        F.cross_entropy(cocoop(images), labels), F.cross_entropy(coop(images), labels), rtol=0, atol=1e-6
    )


def test_cocoop_batched_prompts_equal_a_loop_of_full_forwards_with_gradients(tiny):
    """All B x C prompt sequences in one forward (each image's prefix computed once) equal, features and
    gradients, a loop over images of full 77-token text forwards of that image's context."""
    torch.manual_seed(0)  # the inputs below do not depend on which tests ran before in this process
    clip, tokenizer, _ = tiny
    model = build_model(get_method("cocoop"), clip, tokenizer, seed=2)
    _perturb(model)
    model.set_classnames(NAMES)
    image = F.normalize(torch.randn(3, clip.visual.proj.shape[1]), dim=-1)
    weights = torch.randn(3, len(NAMES), clip.text_projection.shape[1])
    fast = model.conditional_class_text(image)
    params = model.trainable_parameters()
    fast_grads = torch.autograd.grad((fast * weights).sum(), params)

    def loop():
        rows = []
        for i in range(len(image)):
            ctx = model.text_prompts[0] + model.meta_net(image[i : i + 1])  # (n, width): this image's context
            layer = [ctx.unsqueeze(0).expand(len(NAMES), -1, -1)]
            rows.append(
                F.normalize(model.encode_tokens(model.class_tokens, truncate=False, layer_prompts=layer), dim=-1)
            )
        return torch.stack(rows)

    plain = loop()
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    for a, b in zip(fast_grads, torch.autograd.grad((plain * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cocoop_bypasses_the_one_text_forward_for_all_images(tiny):
    """The shared-prompt shortcuts (one class-text forward per step for the whole batch, text encoded once for
    evaluation) cannot hold when every image has its own context: they are refused, and images differ."""
    clip, tokenizer, _ = tiny
    model = build_model(get_method("cocoop"), clip, tokenizer, seed=3)
    _perturb(model)
    model.set_classnames(CLASSES)
    with pytest.raises(RuntimeError, match="depend on the image"):
        model.class_text_features()
    image = model.image_features(torch.randn(2, 3, 32, 32))
    per_image = model.conditional_class_text(image)
    assert not torch.allclose(per_image[0], per_image[1], atol=1e-4)
    # evaluation from cached frozen image features (its image tower is frozen) equals the encoder's forward
    from prompt_ot.evaluate import evaluate

    data = ToyImages(4, len(CLASSES))
    result = evaluate(model, data, CLASSES, batch_size=5)
    frozen = model.frozen_image_features(torch.stack([data[i][0] for i in range(len(data))]))
    with torch.no_grad():
        cached = model.conditional_logits(frozen, max_rows=7).argmax(-1)
    assert torch.equal(result.predictions, cached)


def test_cocoop_has_cocoops_parameter_count_on_the_tiny_model(tiny):
    clip, tokenizer, _ = tiny
    model = build_model(get_method("cocoop"), clip, tokenizer)
    vis, width, n = clip.visual.proj.shape[1], clip.token_embedding.weight.shape[1], 4
    hidden = vis // 16
    assert (
        sum(p.numel() for p in model.trainable_parameters())
        == n * width + vis * hidden + hidden + hidden * width + width
    )


# ---------------------------------------------------------------------------------------------- MaPLe
def test_maple_vision_tokens_are_the_coupling_of_the_text_prompts_at_every_depth(tiny):
    clip, tokenizer, _ = tiny
    model = build_model(get_method("maple", {"prompts": {"text_depth": 2, "vision_depth": 2}}), clip, tokenizer, seed=1)
    _perturb(model)
    assert len(model.vision_prompts) == 0 and len(model.couplings) == 2  # no free vision prompts
    mapped = [f(p) for f, p in zip(model.couplings, model.text_prompts)]
    for ours, expected in zip(model.vision_prompt_tensors(), mapped):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    images = torch.randn(3, 3, 32, 32)
    expected = reference_deep_vision(clip, images, [m.detach() for m in mapped])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-5)
    # MaPLe's init: the first text prompts are the embedding of "a photo"; "of a" stays as fixed words
    fresh = build_model(get_method("maple"), clip, tokenizer, seed=1)
    words = clip.token_embedding(tokenizer(["a photo"])[0])[1:3]
    torch.testing.assert_close(fresh.text_prompts[0].detach(), words)
    fresh.set_classnames(["dog"])
    assert fresh.class_tokens[0].tolist()[:8] == tokenizer(["X X of a dog."])[0].tolist()[:8]


def test_maple_text_prompts_get_the_vision_branchs_gradient(tiny):
    clip, tokenizer, _ = tiny
    model = build_model(get_method("maple", {"prompts": {"text_depth": 2, "vision_depth": 2}}), clip, tokenizer, seed=2)
    _perturb(model)
    images = torch.randn(4, 3, 32, 32)

    def text_grads(weights):  # an image-only loss: the text tower is not run
        return torch.autograd.grad((model.image_features(images) * weights).sum(), list(model.text_prompts))

    a = text_grads(torch.randn(4, clip.visual.proj.shape[1]))
    b = text_grads(torch.randn(4, clip.visual.proj.shape[1]))
    assert all(g.abs().sum() > 0 for g in a)
    assert any(not torch.allclose(x, y) for x, y in zip(a, b))  # it changes when only the image loss changes
    ivlp = build_model(get_method("ivlp", {"prompts": {"text_depth": 2, "vision_depth": 2}}), clip, tokenizer)
    grads = torch.autograd.grad(ivlp.image_features(images).sum(), list(ivlp.text_prompts), allow_unused=True)
    assert all(g is None for g in grads)  # the control: independent prompts get none


def test_maple_fast_forwards_equal_the_plain_ones_with_gradients(tiny):
    """The shared text prefix (with MaPLe's fixed words) and the class-token-only last vision block."""
    import prompt_ot.models.prompted as prompted

    clip, tokenizer, _ = tiny
    model = build_model(get_method("maple"), clip, tokenizer, seed=4)
    _perturb(model)
    model.set_classnames(NAMES)
    params = model.trainable_parameters()
    fast_text = model.class_text_features()
    plain_text = F.normalize(model.encode_tokens(model.class_tokens, truncate=False), dim=-1)
    torch.testing.assert_close(fast_text, plain_text, rtol=0, atol=1e-6)
    w = torch.randn_like(fast_text)
    for a, b in zip(
        torch.autograd.grad((fast_text * w).sum(), model.text_prompts),
        torch.autograd.grad((plain_text * w).sum(), model.text_prompts),
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    images = torch.randn(3, 3, 32, 32)
    fast = model.encode_image(images)
    w = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * w).sum(), params, allow_unused=True)
    original = prompted._first_token_pooling
    prompted._first_token_pooling = lambda visual: False
    try:
        plain = model.encode_image(images)
        plain_grads = torch.autograd.grad((plain * w).sum(), params, allow_unused=True)
    finally:
        prompted._first_token_pooling = original
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6)
    for a, b in zip(fast_grads, plain_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_coupled_layouts_must_match(tiny):
    clip, tokenizer, _ = tiny
    with pytest.raises(UserError, match="must equal text_ctx/text_depth"):
        PromptedCLIP(clip, tokenizer, PromptConfig(2, 2, 4, 2, ctx_init=None, coupled=True))
    with pytest.raises(UserError, match="text_depth 1"):
        PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 0, 0, ctx_init=None, meta_net=16))


# ---------------------------------------------------------------------------------------------- PromptSRC
def test_promptsrc_loss_equals_the_stated_formula():
    g = torch.Generator().manual_seed(0)
    b, c, d = 5, 7, 16
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    image, frozen_image, text, frozen_text = unit(b, d), unit(b, d), unit(c, d), unit(c, d)
    scale = torch.tensor(50.0)
    reg = build_regulariser({"kind": "promptsrc", "image_weight": 10.0, "text_weight": 25.0})
    ours = reg(
        RegulariserInputs(
            image=image,
            frozen_image=frozen_image,
            class_text=text,
            frozen_class_text=frozen_text,
            labels=torch.zeros(b, dtype=torch.long),
            logit_scale=scale,
        )
    )
    l1_text = sum(abs(float(text[i, j] - frozen_text[i, j])) for i in range(c) for j in range(d)) / (c * d)
    l1_image = sum(abs(float(image[i, j] - frozen_image[i, j])) for i in range(b) for j in range(d)) / (b * d)
    kl = 0.0
    for i in range(b):
        p = [math.exp(float(scale * image[i] @ text[k])) for k in range(c)]
        q = [math.exp(float(scale * frozen_image[i] @ frozen_text[k])) for k in range(c)]
        p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        kl += sum(qk * (math.log(qk) - math.log(pk)) for pk, qk in zip(p, q))  # KL(p_zero-shot || p_prompted)
    expected = 25.0 * l1_text + 10.0 * l1_image + kl / (b * c)
    assert float(ours) == pytest.approx(expected, rel=1e-5)


def test_gpa_weights_for_mean_15_std_1_over_20_epochs():
    weights = gpa_weights(20, mean=15, std=1)
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    assert [round(w, 3) for w in weights[11:18]] == [0.004, 0.054, 0.242, 0.399, 0.242, 0.054, 0.004]
    assert all(w < 5e-4 for w in weights[:11] + weights[18:])
    assert gpa_weights(10, mean=0.75, std=0.05, relative=True) == pytest.approx(gpa_weights(10, mean=7.5, std=0.5))


def _promptsrc(aggregate="shared"):
    overrides = {"prompts": {"text_depth": 2, "vision_depth": 2}}
    if aggregate != "shared":
        overrides["aggregate"] = aggregate
    return get_method("promptsrc", overrides)


def _train(tiny, method, **kw):
    clip, tokenizer, _ = tiny
    model = build_model(method, clip, tokenizer, seed=1)
    return train(method, model, ToyImages(6, len(CLASSES)), CLASSES, config(), **kw)


def test_promptsrc_saves_the_gaussian_weighted_sum_of_its_epochs_prompts(tiny):
    aggregate = {"mean": 3, "std": 1}
    per_epoch = []
    clip, tokenizer, _ = tiny
    plain = get_method("promptsrc", {"prompts": {"text_depth": 2, "vision_depth": 2}, "aggregate": None})
    model = build_model(plain, clip, tokenizer, seed=1)
    train(
        plain,
        model,
        ToyImages(6, len(CLASSES)),
        CLASSES,
        config(),
        on_epoch_end=lambda record: per_epoch.append(model.prompt_state()),
    )
    aggregated = _train(tiny, _promptsrc(aggregate))
    weights = gpa_weights(4, **aggregate)
    assert len(per_epoch) == 4
    for name, value in aggregated.prompts.items():
        expected = sum(w * state[name] for w, state in zip(weights, per_epoch))
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        assert not torch.allclose(value, per_epoch[-1][name], atol=1e-5)  # not merely the last epoch's


def test_a_killed_promptsrc_run_resumes_to_the_same_aggregate(tiny, tmp_path):
    method = _promptsrc({"mean": 2.5, "std": 1})
    full = _train(tiny, method, checkpoint_dir=tmp_path / "a")
    first = _train(tiny, method, checkpoint_dir=tmp_path / "b", stop_after_epoch=2)
    assert len(first.history) == 2
    resumed = _train(tiny, method, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    for name, value in full.prompts.items():
        assert torch.equal(value, resumed.prompts[name]), name
    # the final checkpoint holds the aggregate: a third call trains nothing and returns it
    again = _train(tiny, method, checkpoint_dir=tmp_path / "b")
    assert all(torch.equal(again.prompts[k], full.prompts[k]) for k in full.prompts)


def test_promptsrc_frozen_text_target_is_the_60_template_ensemble(tiny):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from prompt_ot.templates import template_set

    templates = template_set("templates:imagenet_60")
    clip80 = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == 60 and templates[0] == "a photo of a {}." and len(set(templates)) == 60
    assert templates[1:] == [t for t in clip80[:60] if t != "a photo of a {}."]
    assert templates[1] == "a bad photo of a {}." and templates[-1] == "itap of the {}."  # PromptSRC's file
    clip, tokenizer, _ = tiny
    model = build_model(get_method("promptsrc"), clip, tokenizer)
    model.set_classnames(CLASSES)
    ours = model.frozen_ensemble_text_features(templates[:3])
    by_hand = torch.stack([clip.encode_text(tokenizer([t.format(c) for c in CLASSES])) for t in templates[:3]]).mean(0)
    torch.testing.assert_close(ours, F.normalize(by_hand, dim=-1), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="unknown template set"):
        get_method("promptsrc", {"frozen_template": "templates:nope"})


def test_aggregation_specs_are_checked():
    with pytest.raises(UserError, match="std must be > 0"):
        get_method("promptsrc", {"aggregate": {"mean": 3, "std": 0}})
    with pytest.raises(UserError, match="'mean' and 'std'"):
        get_method("promptsrc", {"aggregate": {"mean": 3}})
    with pytest.raises(UserError, match="finite"):
        get_method("promptsrc", {"aggregate": {"mean": float("nan"), "std": 1}})


@pytest.mark.slow
def test_trainable_parameters_for_vit_b16_under_the_released_recipe():
    import open_clip

    from prompt_ot.config import resolve_run

    clip, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    params = {"recipe": "released", "variants": {}, "train": {}}
    expected = {"cocoop": 35_360, "maple": 3_555_072, "promptsrc": 46_080, "prompt_ot": 61_440}
    for name, count in expected.items():
        method, _ = resolve_run(params, name, "base2novel", "caltech101", 16)
        model = build_model(method, clip, tokenizer)
        assert sum(p.numel() for p in model.trainable_parameters()) == count, name


# ---------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def cli_work(tmp_path_factory):
    """dtd and eurosat fixtures, the released recipes shortened to 2 fp32 epochs, cross-dataset dtd -> eurosat and
    2-shot few-shot on dtd: manifests and caches made through the CLI."""
    import yaml

    from prompt_ot.cli import main
    from tests.support.cli import TINY_CPU, argv, manifest_and_cache
    from tests.support.data import make_fixture
    from tests.support.params import shrunk_params

    base = tmp_path_factory.mktemp("new_methods_cli")
    root = base / "data"
    for name in ("dtd", "eurosat"):
        make_fixture(name, root, num_classes=4, per_split=(4, 1, 2))
    params = shrunk_params("paper")
    params["datasets"] = ["dtd", "eurosat"]
    params["methods"] = ["cocoop", "maple", "promptsrc"]
    params["protocols"]["cross_dataset"] = {"sources": ["dtd"], "shots": 2, "evaluate": {"targets": ["eurosat"]}}
    # few-shot on the target (the source's 2-shot manifest may not be declared twice); the runs below train both
    # protocols on the source's manifest, resolving each protocol's released recipe for it
    params["protocols"]["few_shot"] = {"datasets": ["eurosat"], "shots": [2], "methods": params["methods"]}
    (base / "params.yaml").write_text(yaml.safe_dump(params))
    work = {"base": base, "params": base / "params.yaml", "main": main}
    manifest_and_cache(root, base / "manifest.json", base / "train_cache", subset="all", params=work["params"])
    for name in ("dtd", "eurosat"):
        test_cache = argv("cache", "test", name, params=work["params"], root=root, out=base / "test" / name, **TINY_CPU)
        assert main(test_cache) == 0
    return work


@pytest.mark.parametrize("protocol", ["cross_dataset", "few_shot"])
@pytest.mark.parametrize("method", ["cocoop", "maple", "promptsrc"])
def test_the_new_methods_train_and_evaluate_under_their_released_recipes(cli_work, method, protocol):
    import json

    from tests.support.cli import evaluate_argv, train_argv

    base, main = cli_work["base"], cli_work["main"]
    out = base / "runs" / protocol / method
    manifest, train_cache = base / "manifest.json", base / "train_cache"
    assert main(train_argv(cli_work["params"], method, manifest, train_cache, out, protocol=protocol)) == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["recipe"]["name"] == "released" and summary["recipe"]["method"] == method
    assert summary["recipe"]["overridden"] == ["epochs", "eval_epoch", "precision"]
    if method == "promptsrc":  # its own aggregation for the protocol: cross-dataset mean 6 std 10, few-shot 45 / 5
        expected = {"cross_dataset": {"mean": 6, "std": 10}, "few_shot": {"mean": 45, "std": 5}}[protocol]
        assert summary["method_config"]["aggregate"] == expected
        assert summary["frozen_image_features"] == "cache"
    targets = ["eurosat"] if protocol == "cross_dataset" else None
    metrics_path = out / "metrics.json"
    prompts = out / "prompts.safetensors"
    evaluate = evaluate_argv(
        cli_work["params"], method, prompts, base / "test", metrics_path, protocol=protocol, targets=targets
    )
    assert main(evaluate) == 0
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics["accuracy"]) == ({"dtd", "eurosat"} if protocol == "cross_dataset" else {"all"})
    assert all(0 <= a <= 100 for a in metrics["accuracy"].values()) and metrics["provenance"]["method"] == method
