"""train.text_chunk: the prompted class texts encoded N classes at a time, each chunk under activation checkpointing.

The loss and every trainable parameter's gradient equal the one-pass computation (float64, tight tolerances) for
CoOp, IVLP, MaPLe, PromptSRC and CoCoOp at chunk sizes that do not divide the class count; packed runs chunk across
the runs' boundary; the forward keeps only a chunk's share of the activations for the backward pass; paths without
gradients are untouched; the setting flows from params.yaml into the trainer, which gives the same prompts with it.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import prompt_ot.models.prompted as prompted
from prompt_ot.config import resolve_run, train_config, validate_params
from prompt_ot.errors import UserError
from prompt_ot.methods import build_model, get_method
from prompt_ot.models.prompted import packed_class_text_features
from prompt_ot.train import TrainConfig, run_fingerprint, train
from tests.support.models import ToyImages, tiny_clip

ROOT = Path(__file__).resolve().parents[1]
# 8 classes: chunks of 3 leave a partial one; one name long enough to set the padded width
NAMES = [f"class number {i}" for i in range(7)] + ["a rather long class name with many words in it"]
CHUNKS = [1, 3, 100]  # 100: more than the classes, one pass


@pytest.fixture(scope="module")
def tiny64():
    clip, tokenizer, _ = tiny_clip()
    return copy.deepcopy(clip).double(), tokenizer


def _model(tiny64, name: str, seed: int = 1, names=NAMES):
    clip, tokenizer = tiny64
    model = build_model(get_method(name), clip, tokenizer, seed=seed)
    model.set_classnames(names)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # prompts (and coupling / meta-net) far from their start, so every part matters
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


def _loss_and_grads(model, images, labels, chunk: int):
    model.text_chunk = chunk
    params = model.trainable_parameters()
    loss = F.cross_entropy(model(images), labels)
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", ["coop", "ivlp", "maple", "promptsrc", "cocoop"])
def test_chunked_loss_and_gradients_equal_the_one_pass_ones(tiny64, name, monkeypatch):
    model = _model(tiny64, name)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 5, 7])
    plain_loss, plain_grads = _loss_and_grads(model, images, labels, 0)
    calls = []
    original = prompted.checkpoint
    monkeypatch.setattr(prompted, "checkpoint", lambda *a, **k: calls.append(k) or original(*a, **k))
    rows = len(NAMES) * (len(images) if model.conditional else 1)
    for chunk in CHUNKS:
        calls.clear()
        loss, grads = _loss_and_grads(model, images, labels, chunk)
        # checkpointed chunks when the chunk is smaller than the rows (CoCoOp: B x C prompt sequences), else one pass
        assert len(calls) == (-(-rows // chunk) if chunk < rows else 0)
        assert all(k == {"use_reentrant": False} for k in calls)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=1e-12)
        assert len(grads) == len(plain_grads) > 0
        for got, want in zip(grads, plain_grads):
            assert want.abs().max() > 0
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


def test_packed_runs_are_chunked_across_their_boundary(tiny64):
    """Two packed runs (5 and 4 classes) in chunks of 3: the middle chunk holds rows of both runs' prompts."""
    models = [_model(tiny64, "ivlp", seed=1, names=NAMES[:5]), _model(tiny64, "ivlp", seed=2, names=NAMES[3:])]
    weights = [torch.randn(len(m.class_tokens), m.clip.text_projection.shape[1], dtype=torch.float64) for m in models]
    params = [p for m in models for p in m.text_prompts]
    results = []
    for chunk in (0, 3, 4):
        for m in models:
            m.text_chunk = chunk
        texts = packed_class_text_features(models)
        loss = sum((t * w).sum() for t, w in zip(texts, weights))
        results.append(([t.detach() for t in texts], torch.autograd.grad(loss, params)))
    (plain_texts, plain_grads), *chunked = results
    for texts, grads in chunked:
        for got, want in zip(texts, plain_texts):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for got, want in zip(grads, plain_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


def _saved_bytes(model, chunk: int) -> int:
    """Bytes of the tensors the class-text forward keeps for the backward pass, the frozen weights not counted."""
    frozen = {p.untyped_storage().data_ptr() for p in model.clip.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.text_chunk = chunk
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.class_text_features().sum().backward()
    return sum(storages.values())


def test_the_forward_keeps_only_the_chunks_inputs_for_the_backward_pass(tiny64):
    model = _model(tiny64, "ivlp", names=[f"class {i} of many" for i in range(24)])
    plain, chunked = _saved_bytes(model, 0), _saved_bytes(model, 4)
    assert plain > 0 and chunked < plain / 4


def test_no_gradient_paths_run_in_one_pass_unchanged(tiny64, monkeypatch):
    model = _model(tiny64, "ivlp")
    model.text_chunk = 0
    with torch.no_grad():
        plain = model.class_text_features()
    monkeypatch.setattr(prompted, "checkpoint", lambda *a, **k: pytest.fail("checkpoint called without gradients"))
    model.text_chunk = 3
    with torch.no_grad():
        assert torch.equal(model.class_text_features(), plain)
        model.frozen_class_text_features()
    cocoop = _model(tiny64, "cocoop")
    cocoop.text_chunk = 2
    with torch.no_grad():
        cocoop(torch.randn(2, 3, 32, 32, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- configuration
def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_text_chunk_reaches_the_trainer_config():
    for path in ("params.yaml", "demo/params.yaml"):  # both ship the setting, off
        assert yaml.safe_load((ROOT / path).read_text())["train"]["text_chunk"] == 0
    params = _params()
    params["train"]["text_chunk"] = 4
    validate_params(params)
    _, recipe = resolve_run(params, "coop", "base2novel", "dtd", 16)
    config = train_config(params, recipe, seed=1, device="cpu")
    assert config.text_chunk == 4
    config.validate()
    assert train_config(_params(), recipe, seed=1, device="cpu").text_chunk == 0


@pytest.mark.parametrize("value, message", [(-1, r"train.text_chunk = -1 is invalid"), (1.5, r"train.text_chunk")])
def test_params_refuse_a_bad_text_chunk(value, message):
    params = _params()
    params["train"]["text_chunk"] = value
    with pytest.raises(UserError, match=message):
        validate_params(params)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_train_config_refuses_a_bad_text_chunk(value):
    with pytest.raises(UserError, match=r"train.text_chunk"):
        TrainConfig(text_chunk=value).validate()


def test_text_chunk_is_not_part_of_the_run_fingerprint():
    """An operational key: a run checkpointed without chunks resumes with them."""
    method = get_method("coop")
    assert run_fingerprint(method, TrainConfig(), NAMES, "tiny") == run_fingerprint(
        method, TrainConfig(text_chunk=8), NAMES, "tiny"
    )


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["coop", "ivlp"])
def test_training_with_text_chunk_gives_the_same_prompts(name, monkeypatch):
    clip, tokenizer, _ = tiny_clip()
    classes = ["red thing", "green thing", "blue thing", "grey thing", "white thing"]
    method = get_method(name, {"prompts": {"text_depth": 2, "vision_depth": 2}} if name != "coop" else None)
    calls = []
    original = prompted.checkpoint
    monkeypatch.setattr(prompted, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    prompts = {}
    for chunk in (0, 2):
        config = TrainConfig(epochs=2, batch_size=4, lr=0.01, seed=1, device="cpu", text_chunk=chunk)
        model = build_model(method, clip, tokenizer, seed=1)
        prompts[chunk] = train(method, model, ToyImages(3, len(classes)), classes, config).prompts
        assert bool(calls) == (chunk > 0)  # the trainer hands the setting to the model
    assert prompts[0].keys() == prompts[2].keys()
    for key, value in prompts[0].items():
        assert not torch.equal(value, build_model(method, clip, tokenizer, seed=1).prompt_state()[key])  # it trained
        torch.testing.assert_close(prompts[2][key], value, rtol=1e-5, atol=1e-6)
