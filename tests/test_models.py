"""The prompted CLIP: exact equality with open_clip when prompts are off, the IVLP replace rule,
truncated text equals the full 77-token forward, parameter counts, and backbone loading errors."""

import contextlib

import pytest
import torch

from prompt_ot.errors import UserError
from prompt_ot.models.prompted import PromptConfig, PromptedCLIP
from tests.support.models import reference_deep_vision, tiny_clip

CLASSNAMES = ["dog", "cat", "great white shark", "a rather long class name with many words in it"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def test_depth_zero_equals_open_clip(tiny):
    clip, tokenizer, _ = tiny
    model = PromptedCLIP(clip, tokenizer, PromptConfig(0, 0, 0, 0, ctx_init=None))
    assert model.trainable_parameters() == []
    images = torch.randn(3, 3, 32, 32)
    tokens = tokenizer(["a photo of a dog.", "x", "one two three four five six seven"])
    torch.testing.assert_close(model.encode_image(images), clip.encode_image(images), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.encode_tokens(tokens), clip.encode_text(tokens), rtol=0, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_text_equals_full_forward(tiny, depth):
    clip, tokenizer, _ = tiny
    torch.manual_seed(1)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, depth, 4, depth))
    model.set_classnames(CLASSNAMES)
    short = model.encode_tokens(model.class_tokens, truncate=True)
    full = model.encode_tokens(model.class_tokens, truncate=False)
    assert model.class_tokens.shape[1] == 77
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_shared_prefix_class_text_equals_the_full_forward_with_gradients(tiny, depth):
    """class_text_features computes the start token and prompts once and runs class tokens unpadded: the
    features and the prompts' gradients equal the plain 77-token forward's."""
    import torch.nn.functional as F

    clip, tokenizer, _ = tiny
    torch.manual_seed(3)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, depth, 4, depth))
    with torch.no_grad():  # prompts far from their initialisation, so that every layer matters
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.set_classnames(CLASSNAMES + ["x"])
    weights = torch.randn(len(CLASSNAMES) + 1, clip.text_projection.shape[1])
    fast = model.class_text_features()
    full = F.normalize(model.encode_tokens(model.class_tokens, truncate=False), dim=-1)
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-6)
    fast_grads = torch.autograd.grad((fast * weights).sum(), list(model.text_prompts))
    full_grads = torch.autograd.grad((full * weights).sum(), list(model.text_prompts))
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_class_token_only_last_block_equals_the_full_block(tiny):
    """With gradients the last vision block runs for the class token alone; without, open_clip's blocks."""
    clip, tokenizer, _ = tiny
    torch.manual_seed(4)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 4, 2))
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        plain = model.encode_image(images)
    weights = torch.randn_like(plain)
    trained = model.encode_image(images)
    torch.testing.assert_close(trained.detach(), plain, rtol=0, atol=1e-6)
    fast = torch.autograd.grad((trained * weights).sum(), list(model.vision_prompts))
    import prompt_ot.models.prompted as prompted

    original = prompted._first_token_pooling
    prompted._first_token_pooling = lambda visual: False
    try:
        reference = torch.autograd.grad((model.encode_image(images) * weights).sum(), list(model.vision_prompts))
    finally:
        prompted._first_token_pooling = original
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prompts_change_features_and_init_from_words(tiny):
    clip, tokenizer, _ = tiny
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 4, 2, ctx_init="a photo of a"))
    words = clip.token_embedding(tokenizer(["a photo of a"])[0])[1:5]
    torch.testing.assert_close(model.text_prompts[0].detach(), words)
    # with the layer-0 context equal to "a photo of a" and deeper prompts zeroed, the deep prompts are
    # still replacing (not adding to) the layer outputs; the layer-0 prompt alone reproduces the words
    shallow = PromptedCLIP(clip, tokenizer, PromptConfig(4, 1, 0, 0, ctx_init="a photo of a"))
    shallow.set_classnames(["dog"])
    hand = clip.encode_text(tokenizer(["a photo of a dog."]))
    torch.testing.assert_close(shallow.encode_tokens(shallow.class_tokens), hand, rtol=0, atol=1e-5)


def test_deep_vision_prompts_follow_replace_rule(tiny):
    clip, tokenizer, _ = tiny
    torch.manual_seed(2)
    model = PromptedCLIP(clip, tokenizer, PromptConfig(0, 0, 3, 2, ctx_init=None))
    images = torch.randn(2, 3, 32, 32)
    expected = reference_deep_vision(clip, images, [p.detach() for p in model.vision_prompts])
    torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-5)
    # changing the deep prompt changes the output: it is used
    with torch.no_grad():
        model.vision_prompts[1].add_(
            torch.randn_like(model.vision_prompts[1])
        )  # a constant shift vanishes in LayerNorm
    assert not torch.allclose(model.encode_image(images), expected, atol=1e-3)


def test_only_prompts_train_and_gradients_reach_them(tiny):
    clip, tokenizer, _ = tiny
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 4, 2))
    model.set_classnames(CLASSNAMES)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"text_prompts.0", "text_prompts.1", "vision_prompts.0", "vision_prompts.1"}
    logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert all(p.grad is None for p in clip.parameters())


def test_bad_prompt_settings_are_user_errors(tiny):
    clip, tokenizer, _ = tiny
    with pytest.raises(UserError, match="ctx_init"):
        PromptedCLIP(clip, tokenizer, PromptConfig(3, 1, 0, 0, ctx_init="a photo of a"))
    with pytest.raises(UserError, match="text_depth=5"):
        PromptedCLIP(clip, tokenizer, PromptConfig(4, 5, 0, 0))


def test_prompt_state_roundtrip_and_mismatch(tiny):
    clip, tokenizer, _ = tiny
    a = PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 4, 2))
    b = PromptedCLIP(clip, tokenizer, PromptConfig(4, 2, 4, 2, ctx_init=None))
    b.load_prompt_state(a.prompt_state())
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    other = PromptedCLIP(clip, tokenizer, PromptConfig(4, 1, 0, 0))
    with pytest.raises(UserError, match="does not match"):
        other.load_prompt_state(a.prompt_state())


def test_unknown_backbone_and_offline_tag_fail_fast(monkeypatch, tmp_path):
    import time

    from prompt_ot.models.backbone import load_backbone

    with pytest.raises(UserError, match="unknown backbone 'no-such-net'"):
        load_backbone("no-such-net")
    with pytest.raises(UserError, match="unknown pretrained tag"):
        load_backbone("tiny-vit", pretrained="laion9000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(UserError, match="local checkpoint file"):
        load_backbone("ViT-B-16-quickgelu", pretrained="openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 10  # fails at once, no network retries
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("tiny-vit", pretrained=str(tmp_path / "missing.safetensors"))


def test_local_checkpoint_loads_same_weights(tmp_path):
    from safetensors.torch import save_file

    from prompt_ot.models.backbone import load_backbone

    clip, _, _ = tiny_clip()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    loaded, _, _ = load_backbone("tiny-vit", pretrained=str(path))
    for (k, v), (k2, v2) in zip(clip.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(UserError, match="could not load checkpoint"):
        load_backbone("tiny-vit", pretrained=str(wrong))


def test_a_checkpoint_loads_without_the_random_init_into_the_same_model(tmp_path, monkeypatch):
    """With a checkpoint, create_model's random init is skipped (the checkpoint is loaded strictly): every parameter
    and buffer, the non-persistent attention mask included, equals a load with the init, the caller's random
    stream is untouched, and torch.nn.init is itself again afterwards, after a failed load too."""
    import torch.nn.init as init
    from safetensors.torch import save_file

    from prompt_ot.models import backbone

    clip, _, _ = tiny_clip()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    functions = {n: getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_")}
    drawn = []
    real_normal = init.normal_
    monkeypatch.setattr(init, "normal_", lambda t, *a, **k: drawn.append(t.shape) or real_normal(t, *a, **k))
    functions["normal_"] = init.normal_
    torch.manual_seed(7)
    fast, _, _ = backbone.load_backbone("tiny-vit", pretrained=str(path))
    after = torch.rand(3)
    assert drawn == [] and all(getattr(init, n) is f for n, f in functions.items())
    monkeypatch.setattr(backbone, "_no_random_init", contextlib.nullcontext)
    torch.manual_seed(7)
    slow, _, _ = backbone.load_backbone("tiny-vit", pretrained=str(path))
    assert drawn and torch.equal(torch.rand(3), after)
    assert [k for k, _ in fast.named_buffers()] == ["attn_mask"]
    for (k, v), (k2, v2) in zip(
        [*fast.state_dict().items(), *fast.named_buffers()], [*slow.state_dict().items(), *slow.named_buffers()]
    ):
        assert k == k2 and torch.equal(v, v2), k
    monkeypatch.undo()
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(UserError, match="could not load checkpoint"):
        backbone.load_backbone("tiny-vit", pretrained=str(wrong))
    assert all(getattr(init, n) is f for n, f in functions.items() if n != "normal_") and init.normal_ is real_normal


@pytest.mark.parametrize("name", ["demo-vit", "tiny-vit", "ViT-B-16", "RN50", "ViT-L-14-quickgelu"])
def test_the_tokenizer_built_from_shared_tables_is_open_clips(name):
    """get_tokenizer copies one default SimpleTokenizer's vocabulary tables (what the fork server builds once) and
    sets the per-call settings as SimpleTokenizer.__init__ does: every attribute equals open_clip's own tokenizer's,
    the token ids too, and each tokenizer keeps its own memo of encoded words."""
    import open_clip

    from prompt_ot.models.backbone import get_tokenizer, register_shipped_configs

    register_shipped_configs()
    ours, theirs = get_tokenizer(name), open_clip.get_tokenizer(name)
    assert type(ours) is type(theirs) and vars(ours).keys() == vars(theirs).keys()
    for key, value in vars(theirs).items():
        if key == "pat":
            assert (ours.pat.pattern, ours.pat.flags) == (value.pattern, value.flags)
        else:
            assert getattr(ours, key) == value, key
    texts = ["a photo of a T-shirt/top, a type of clothing.", "X X X X ankle boot.", "naïve café's 42"]
    assert torch.equal(ours(texts), theirs(texts))
    assert ours.cache is not get_tokenizer(name).cache


@pytest.mark.slow
def test_vit_b16_truncation_and_parameter_count():
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    model = PromptedCLIP(clip, tokenizer, PromptConfig(4, 12, 4, 12))
    assert sum(p.numel() for p in model.trainable_parameters()) == 61_440
    model.set_classnames(CLASSNAMES)
    with torch.no_grad():
        short = model.encode_tokens(model.class_tokens, truncate=True)
        full = model.encode_tokens(model.class_tokens, truncate=False)
    torch.testing.assert_close(short, full, rtol=0, atol=1e-4)
