"""The feature cache against the computations it replaces: training with cached view features gives the
prompts of training with the frozen forward, cached test and text features equal the model's, cached
evaluation equals ``evaluate()``; plus reuse, killed builds and caches of another backbone or seed."""

import functools
import math
import os

import numpy as np
import pytest
import torch

from prompt_ot import cache as cache_module
from prompt_ot.cache import (
    FrozenViewFeatures,
    TestFeatures,
    build_test_cache,
    build_train_cache,
    evaluate_cached,
    uses_frozen_image_encoder,
)
from prompt_ot.cli import main
from prompt_ot.data.augment import TestImages, TrainViews, batch_train_views
from prompt_ot.data.fewshot import build_manifest, read_manifest, write_manifest
from prompt_ot.data.registry import classnames_of, dataset_spec
from prompt_ot.data.store import build_store
from prompt_ot.errors import UserError
from prompt_ot.evaluate import evaluate
from prompt_ot.methods import build_model, get_method
from prompt_ot.models.prompted import PromptedCLIP
from prompt_ot.train import TrainConfig, train
from tests.support.cli import argv
from tests.support.models import tiny_clip

EPOCHS = 2
SEED = 1
QUIET = {"device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits prepared in the real layout, a 2-shot manifest, and a test and a train cache built from them."""
    base = tmp_path_factory.mktemp("cache")
    spec = dataset_spec("digits")
    root = base / "data"
    spec.prepare_fn(spec.dataset_dir(root))
    split = spec.load_split(root)
    manifest_path = base / "manifest.json"
    write_manifest(manifest_path, build_manifest(split, spec.image_root(root), "digits", "all", shots=2, seed=1))
    test_dir, train_dir = base / "test_cache", base / "train_cache"
    build_test_cache("digits", root, "tiny-vit", None, test_dir, batch_size=64, **QUIET)
    build_train_cache(
        manifest_path, root, "tiny-vit", None, train_dir, epochs=EPOCHS, seed=SEED, batch_size=16, **QUIET
    )
    return {
        "root": root,
        "spec": spec,
        "split": split,
        "manifest": manifest_path,
        "test": test_dir,
        "train": train_dir,
        "base": base,
    }


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _config():
    return TrainConfig(epochs=EPOCHS, batch_size=4, lr=0.01, seed=SEED, device="cpu")


def _train(tiny, dataset, classnames, **kw):
    clip, tokenizer, _ = tiny
    method = get_method("prompt_ot")  # depth 12, capped to the tiny model's layers by build_model
    model = build_model(method, clip, tokenizer, seed=SEED)
    if "frozen_image_features" in kw:

        def forbidden(images):
            raise AssertionError("the frozen image forward ran although cached features were supplied")

        model.frozen_image_features = forbidden
    return train(method, model, dataset, classnames, _config(), **kw).prompts


def test_cached_views_are_the_frozen_features_of_the_trainers_views(digits, tiny):
    clip, tokenizer, pre = tiny
    frozen = PromptedCLIP(clip, tokenizer, get_method("zeroshot").prompts)
    cached = FrozenViewFeatures(digits["train"], seed=SEED, epochs=EPOCHS, backbone="tiny-vit")
    store = cached.store
    assert cached.views.shape == (EPOCHS, len(read_manifest(digits["manifest"]).train), 64)
    for epoch in range(EPOCHS):
        indices = torch.tensor([3, 0, 19, 7])
        images, _ = batch_train_views(store, indices, SEED, epoch, pre.image_size, pre.mean, pre.std)
        torch.testing.assert_close(cached(epoch, indices), frozen.frozen_image_features(images), rtol=0, atol=1e-6)
    assert not torch.allclose(cached(0, [3]), cached(1, [3]))  # each epoch has its own view
    with pytest.raises(UserError, match="epochs"):
        cached(EPOCHS, [0])


def test_training_with_cached_views_gives_the_prompts_of_the_frozen_forward(digits, tiny):
    manifest = read_manifest(digits["manifest"])
    image_root = digits["spec"].image_root(digits["root"])
    _, _, pre = tiny
    # the reference reads its own store of the manifest, so the cache's item order is checked too
    own_store = build_store(manifest.items("train"), image_root, digits["base"] / "own_store", "train", pre.image_size)
    reference = _train(tiny, TrainViews(own_store, SEED, pre.image_size, pre.mean, pre.std), manifest.classnames)

    cached = FrozenViewFeatures(digits["train"], seed=SEED, epochs=EPOCHS)
    supplied = _train(tiny, cached.train_views(), manifest.classnames, frozen_image_features=cached)
    for name in reference:
        torch.testing.assert_close(supplied[name], reference[name], rtol=0, atol=1e-5)

    # the regulariser does see the features: views of another seed give other prompts
    other = digits["base"] / "train_seed2"
    build_train_cache(digits["manifest"], digits["root"], "tiny-vit", None, other, epochs=EPOCHS, seed=2, **QUIET)
    wrong = _train(tiny, cached.train_views(), manifest.classnames, frozen_image_features=FrozenViewFeatures(other))
    assert max(float((wrong[n] - reference[n]).abs().max()) for n in reference) > 1e-4


def test_views_augmented_on_the_device_path_train_to_the_same_prompts(digits, tiny):
    """The trainer's device-augmentation path (``TrainViews.device_batch``, what a GPU run uses) forced on
    the CPU gives bitwise the prompts of the DataLoader path: same views, same batches, same steps."""
    import dataclasses

    manifest = read_manifest(digits["manifest"])
    cached = FrozenViewFeatures(digits["train"], seed=SEED, epochs=EPOCHS)
    clip, tokenizer, _ = tiny
    method = get_method("prompt_ot")
    results, calls = {}, {}
    for where in ("cpu", "device"):
        model = build_model(method, clip, tokenizer, seed=SEED)
        views = cached.train_views()
        counted, calls[where] = views.device_batch, []

        def device_batch(indices, device, counted=counted, log=calls[where]):
            log.append(len(indices))
            return counted(indices, device)

        views.device_batch = device_batch
        config = dataclasses.replace(_config(), augment_on=where)  # "cpu": the DataLoader path
        results[where] = train(method, model, views, manifest.classnames, config, frozen_image_features=cached).prompts
    assert calls["cpu"] == [] and len(calls["device"]) == EPOCHS * (len(views) // 4)
    for name in results["cpu"]:
        assert torch.equal(results["cpu"][name], results["device"][name]), name


DEVICE_PACKS = {  # (method, frozen image features from the cache?) of each packed run
    "deep prompts": [
        ("prompt_ot", True),
        ("prompt_ot_sinkhorn", False),
        ("prompt_ot_unbalanced", True),
        ("pointwise_l1", False),
    ],
    "text prompts": [("coop", False), ("kgcoop", False)],
}


def _device_pack(digits, tiny, precision, pack, device, backend):
    """The runs of ``DEVICE_PACKS[pack]`` on ``device``, views augmented there, at the start of epoch 1."""
    import dataclasses

    from prompt_ot.train import RunSpec, _Run

    manifest = read_manifest(digits["manifest"])
    cached = FrozenViewFeatures(digits["train"], seed=SEED, epochs=EPOCHS)
    clip, tokenizer, _ = tiny
    config = dataclasses.replace(_config(), augment_on="device", precision=precision, device=str(device))
    runs = []
    for name, from_cache in DEVICE_PACKS[pack]:
        method = get_method(name, {"regulariser": {"backend": backend}} if name.startswith("prompt_ot") else None)
        model = build_model(method, clip, tokenizer, seed=SEED)
        runs.append(
            _Run(
                RunSpec(
                    method,
                    model,
                    cached.train_views(),
                    manifest.classnames,
                    config,
                    frozen_image_features=cached if from_cache else None,
                ),
                device,
            )
        )
    for run in runs:
        run.begin_epoch(0, device)
    assert all(run.on_device_views for run in runs)
    return runs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("pack", list(DEVICE_PACKS))
def test_a_device_training_step_reads_nothing_back_on_the_host(digits, tiny, precision, pack):
    """A GPU step's work, forced on the CPU, reads no tensor value on the host: the CPU twin of
    ``test_a_gpu_training_step_never_waits_for_the_device``.

    Packs of runs with everything a GPU step uses: views augmented by ``device_batch``, the OT plan on
    the torch backend (what ``auto`` picks off the CPU: exact, Sinkhorn and unbalanced), frozen image
    features from the cache and from the shared frozen forward, autocast. The first step may read values
    (it builds the text layout and the permutation table once); every later step must not.
    """
    from prompt_ot.train import _packed_step
    from tests.support.host_reads import HostReads

    device = torch.device("cpu")
    runs = _device_pack(digits, tiny, precision, pack, device, backend="torch")
    _packed_step(runs, 0, device, precision, {}, True)
    with HostReads() as reads:
        for _ in range(2):
            _packed_step(runs, 0, device, precision, {}, True)
    assert reads.found == []
    assert all(run.seen == 3 * runs[0].spec.config.batch_size for run in runs)
    # the recorder does see a read on the host, and the step's own sums are still on the device
    with HostReads() as reads:
        assert torch.isfinite(runs[0].sums["loss"]).item()
    assert len(reads.found) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("pack", list(DEVICE_PACKS))
def test_a_gpu_training_step_never_waits_for_the_device(digits, tiny, pack):
    """On a GPU, with the default backend, a bf16 step of a pack runs under sync debug mode "error"."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from prompt_ot.train import _packed_step

    device = torch.device("cuda")
    try:
        runs = _device_pack(digits, tiny, "bf16", pack, device, backend="auto")
        _packed_step(runs, 0, device, "bf16", {}, True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                _packed_step(runs, 0, device, "bf16", {}, True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(torch.isfinite(run.sums["loss"]).item() for run in runs)
    finally:
        tiny[0].to("cpu")  # the module's shared backbone goes back for the other tests


def test_cached_test_features_equal_the_frozen_forward(digits, tiny):
    clip, tokenizer, pre = tiny
    frozen = PromptedCLIP(clip, tokenizer, get_method("zeroshot").prompts)
    test = TestFeatures(digits["test"], backbone="tiny-vit")
    split_test = digits["split"]["test"]
    assert test.store.relpaths == [it.relpath for it in split_test]  # row i = store item i = split item i
    assert test.labels.tolist() == [it.label for it in split_test]
    images = torch.stack([img for img, _ in TestImages(test.store, pre.mean, pre.std)])
    torch.testing.assert_close(test.image_features, frozen.frozen_image_features(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(test.image_features.norm(dim=-1), torch.ones(len(test)))

    assert test.templates == ["a photo of the digit {}.", "a photo of a {}."]
    classnames = classnames_of(digits["split"])
    assert test.classnames == classnames
    for template in test.templates:
        frozen.set_classnames(classnames, template)
        torch.testing.assert_close(test.text_features(template), frozen.frozen_class_text_features(), rtol=0, atol=1e-6)
    assert not torch.allclose(test.text_features(test.templates[0]), test.text_features(test.templates[1]))
    with pytest.raises(UserError, match="no text features for template"):
        test.text_features("a drawing of a {}.")


class _Relabelled(torch.utils.data.Dataset):
    def __init__(self, images, rows, labels):
        self.images, self.rows, self.labels = images, rows.tolist(), labels.tolist()

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        return self.images[self.rows[k]][0], self.labels[k]


@pytest.mark.parametrize("method_name", ["zeroshot", "coop"])
@pytest.mark.parametrize("subset", ["all", "novel"])
def test_cached_evaluation_equals_a_full_forward(digits, tiny, method_name, subset):
    clip, tokenizer, pre = tiny
    method = get_method(method_name)
    assert uses_frozen_image_encoder(method)
    assert not uses_frozen_image_encoder(get_method("prompt_ot"))
    model = build_model(method, clip, tokenizer, seed=3)  # coop: seeded random context, not trained
    test = TestFeatures(digits["test"]).subset(subset)
    template = digits["spec"].template
    full = evaluate(
        model, _Relabelled(TestImages(test.store, pre.mean, pre.std), test.rows, test.labels), test.classnames, template
    )
    if method_name == "zeroshot":
        class_text = test.text_features(template)
    else:
        model.set_classnames(test.classnames, template)
        class_text = model.class_text_features()
    fast = evaluate_cached(test, class_text)
    assert fast.accuracy == full.accuracy and fast.n == full.n
    assert torch.equal(fast.predictions, full.predictions)
    if subset == "novel":
        assert test.classnames == ["five", "six", "seven", "eight", "nine"]
        assert set(test.labels.tolist()) == set(range(5))


def test_second_build_is_a_noop(digits, monkeypatch):
    before = {kind: _mtimes(digits[kind]) for kind in ("test", "train")}

    def forbidden(*args, **kwargs):
        raise AssertionError("an up-to-date cache was recomputed")

    monkeypatch.setattr(cache_module, "load_frozen_encoder", forbidden)
    again = build_test_cache("digits", digits["root"], "tiny-vit", None, digits["test"], **QUIET)
    assert not again.built and again.computed == 0
    for epochs in (EPOCHS, 1):  # a cache of more epochs serves a shorter run
        again = build_train_cache(
            digits["manifest"], digits["root"], "tiny-vit", "none", digits["train"], epochs=epochs, seed=SEED, **QUIET
        )
        assert not again.built
    assert {kind: _mtimes(digits[kind]) for kind in ("test", "train")} == before


def _failing_forward(monkeypatch, after_calls):
    calls = []
    original = PromptedCLIP.frozen_image_features

    def flaky(self, images):
        calls.append(1)
        if len(calls) > after_calls:
            raise RuntimeError("killed mid-way")
        return original(self, images)

    monkeypatch.setattr(PromptedCLIP, "frozen_image_features", flaky)


def test_killed_build_leaves_nothing_that_looks_complete(digits, tmp_path, monkeypatch):
    _failing_forward(monkeypatch, after_calls=1)
    out = tmp_path / "test_cache"
    with pytest.raises(RuntimeError, match="killed"):
        build_test_cache("digits", digits["root"], "tiny-vit", None, out, batch_size=32, **QUIET)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no complete test feature cache"):
        TestFeatures(out)
    train_cache = functools.partial(
        build_train_cache, digits["manifest"], digits["root"], "tiny-vit", None, tmp_path / "train", **QUIET
    )
    with pytest.raises(RuntimeError, match="killed"):
        train_cache(epochs=3, seed=SEED, batch_size=8)
    assert list(tmp_path.iterdir()) == []

    # a killed replacement keeps the old, complete cache as it was
    monkeypatch.undo()
    train_cache(epochs=1, seed=SEED)
    before = _mtimes(tmp_path / "train")
    _failing_forward(monkeypatch, after_calls=0)
    with pytest.raises(RuntimeError, match="killed"):
        train_cache(epochs=1, seed=2, replace=True)
    assert _mtimes(tmp_path / "train") == before and [p.name for p in tmp_path.iterdir()] == ["train"]
    assert FrozenViewFeatures(tmp_path / "train", seed=SEED).epochs == 1


def test_cache_of_another_seed_or_backbone_is_refused_or_replaced(digits, tmp_path):
    out = tmp_path / "train"
    build_train_cache(digits["manifest"], digits["root"], "tiny-vit", None, out, epochs=1, seed=SEED, **QUIET)
    with pytest.raises(UserError, match=r"seed 1, this run asks for seed 2.*--replace"):
        build_train_cache(digits["manifest"], digits["root"], "tiny-vit", None, out, epochs=1, seed=2, **QUIET)
    with pytest.raises(UserError, match="built for seed 1, this run needs 2"):
        FrozenViewFeatures(out, seed=2)
    with pytest.raises(UserError, match="built for epochs 1, this run needs 2"):
        FrozenViewFeatures(out, epochs=2)
    replaced = build_train_cache(
        digits["manifest"], digits["root"], "tiny-vit", None, out, epochs=1, seed=2, replace=True, **QUIET
    )
    assert replaced.built and FrozenViewFeatures(out, seed=2).seed == 2
    more = build_train_cache(digits["manifest"], digits["root"], "tiny-vit", None, out, epochs=2, seed=2, **QUIET)
    assert more.built and "epochs" in more.reason and FrozenViewFeatures(out).epochs == 2

    test_out = tmp_path / "test"
    build_test_cache("digits", digits["root"], "tiny-vit", None, test_out, **QUIET)
    with pytest.raises(UserError, match="backbone 'tiny-vit', this run asks for backbone 'demo-vit'"):
        build_test_cache("digits", digits["root"], "demo-vit", None, test_out, **QUIET)
    with pytest.raises(UserError, match="built for backbone 'tiny-vit'"):
        TestFeatures(test_out, backbone="demo-vit")
    with pytest.raises(UserError, match="is a 'test' feature cache"):
        FrozenViewFeatures(test_out)
    changed = build_test_cache(
        "digits", digits["root"], "tiny-vit", None, test_out, templates=["itap of a {}."], **QUIET
    )
    assert changed.built and "templates" in changed.reason and TestFeatures(test_out).templates == ["itap of a {}."]


def test_changed_checkpoint_file_rebuilds(digits, tiny, tmp_path):
    from safetensors.torch import save_file

    clip, _, _ = tiny
    weights = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(weights))
    out = tmp_path / "cache"
    first = build_test_cache("digits", digits["root"], "tiny-vit", str(weights), out, **QUIET)
    assert first.built
    torch.testing.assert_close(TestFeatures(out).image_features, TestFeatures(digits["test"]).image_features)
    assert not build_test_cache("digits", digits["root"], "tiny-vit", str(weights), out, **QUIET).built
    state["visual.proj"] = state["visual.proj"] * -1.0
    save_file(state, str(weights))
    again = build_test_cache("digits", digits["root"], "tiny-vit", str(weights), out, **QUIET)
    assert again.built and "weights" in again.reason
    torch.testing.assert_close(TestFeatures(out).image_features, -TestFeatures(digits["test"]).image_features)


def test_a_folder_that_is_not_a_cache_is_never_overwritten(digits, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="not a feature cache"):
        build_test_cache("digits", digits["root"], "tiny-vit", None, out, replace=True, **QUIET)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    with pytest.raises(UserError, match="exactly one"):
        build_test_cache("digits", digits["root"], "tiny-vit", None, tmp_path / "x", templates=["a photo"], **QUIET)


def train_cache_args(digits, out) -> list[str]:
    """``cache train`` of the digits manifest (its 4th word), 1 epoch, seed 1, ending in ``--out OUT --device cpu``."""
    options = {"backbone": "tiny-vit", "epochs": 1, "seed": 1, "out": out, "device": "cpu"}
    return argv("cache", "train", manifest=digits["manifest"], root=digits["root"], **options)


def test_cli_builds_reuses_and_reports_mistakes(digits, tmp_path, capsys):
    out = tmp_path / "test"
    args = argv("cache", "test", "digits", root=digits["root"], backbone="tiny-vit", out=out, device="cpu")
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    torch.testing.assert_close(TestFeatures(out).image_features, TestFeatures(digits["test"]).image_features)
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out

    train_out = tmp_path / "train"
    train_args = train_cache_args(digits, train_out)
    assert main(train_args) == 0
    np.testing.assert_array_equal(FrozenViewFeatures(train_out).views[0], FrozenViewFeatures(digits["train"]).views[0])
    assert main(train_args[:-4] + ["--out", str(train_out), "--seed", "3", "--device", "cpu"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(train_args[:3] + [str(tmp_path / "missing.json")] + train_args[4:]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "missing.json")


def test_the_training_image_size_cap_and_the_store_format_are_inputs_of_the_train_cache(digits, tmp_path, capsys):
    import json

    out = tmp_path / "train"
    args = train_cache_args(digits, out)
    assert main(args + ["--train-short-side", "0"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"]["train_short_side"] == 0 and index["inputs"]["store_format"] == 2
    store_index = json.loads((out / "store" / "index.json").read_text())
    assert store_index["preprocess"]["resize_shorter_side_above"] is None
    capsys.readouterr()
    assert main(args) == 0  # the automatic cap is another input
    assert "inputs changed (train_short_side)" in capsys.readouterr().out
    assert json.loads((out / "store" / "index.json").read_text())["preprocess"][
        "resize_shorter_side_above"
    ] == math.ceil(FrozenViewFeatures(out).index["preprocess"]["image_size"] / math.sqrt(0.08 * 3 / 4))
    # a cache written before the store format was an input (an old, square store) is rebuilt
    index = json.loads((out / "index.json").read_text())
    del index["inputs"]["store_format"]
    (out / "index.json").write_text(json.dumps(index))
    assert main(args) == 0
    assert "inputs changed (store_format)" in capsys.readouterr().out
    assert main(args + ["--train-short-side", "-5"]) == 2
    assert "--train-short-side: must be a non-negative integer" in capsys.readouterr().err  # refused when parsed
