"""Packed training: several runs in one process on one shared frozen backbone give each run's own result.

Each packed run is compared with the same run trained alone. A run's loss depends only on its own prompts
and SGD is element-wise, so the only differences are float rounding of the larger matrix products in the
shared forwards. Stated tolerance after 3 epochs on the tiny model: prompts within 1e-5 (absolute; prompt
values are ~0.02-1), per-epoch losses within 1e-5 (relative), identical train accuracy.
"""

import pytest
import torch

from prompt_ot.errors import UserError
from prompt_ot.methods import build_model, get_method
from prompt_ot.models.prompted import packed_class_text_features, packed_image_features
from prompt_ot.train import RunSpec, TrainConfig, train, train_packed
from tests.support.models import ToyImages, tiny_clip

PROMPT_TOL = 1e-5
LOSS_TOL = 1e-5
SHALLOW = {"prompts": {"text_depth": 2, "vision_depth": 2}}
DATASETS = {  # name -> (classes, images per class, data seed)
    "colours": (["red thing", "green thing", "blue thing"], 6, 0),
    "shapes": (["round shape", "square shape", "long pointed star shape", "ring"], 5, 1),
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


def config(seed, **kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "lr": 0.01, "seed": seed, "device": "cpu", **kw})


def spec(tiny, method_name, dataset, seed, tmp=None, **kw):
    clip, tokenizer, _ = tiny
    method = get_method(method_name, SHALLOW if method_name not in ("coop", "kgcoop", "zeroshot", "cocoop") else None)
    classes, per_class, data_seed = DATASETS[dataset]
    return RunSpec(
        method,
        build_model(method, clip, tokenizer, seed=seed),
        ToyImages(per_class, len(classes), seed=data_seed),
        classes,
        config(seed, **kw),
        checkpoint_dir=tmp,
    )


def assert_same_run(packed, alone):
    assert packed.prompts.keys() == alone.prompts.keys()
    for name in alone.prompts:
        assert torch.allclose(packed.prompts[name], alone.prompts[name], rtol=0, atol=PROMPT_TOL), name
    assert len(packed.history) == len(alone.history)
    for p, a in zip(packed.history, alone.history):
        assert p["epoch"] == a["epoch"] and p["lr"] == a["lr"]
        assert p["train_accuracy"] == a["train_accuracy"]
        for key in ("loss", "ce", "regulariser"):
            assert p[key] == pytest.approx(a[key], rel=LOSS_TOL, abs=1e-7), key


# (method, dataset, seed) of each packed run: other seeds, other datasets (other class counts and sizes,
# so the packs' epochs have different lengths) and other methods with the same prompt layout.
PACKS = {
    "seeds": [("prompt_ot", "colours", 1), ("prompt_ot", "colours", 2), ("prompt_ot", "colours", 3)],
    "datasets": [("prompt_ot", "colours", 1), ("prompt_ot", "shapes", 1)],
    "methods": [
        ("ivlp", "shapes", 2),
        ("prompt_ot", "shapes", 2),
        ("pointwise_l1", "colours", 1),
        ("prompt_ot_sinkhorn", "colours", 1),
    ],
    "text-only prompts": [("coop", "colours", 1), ("kgcoop", "shapes", 1)],
    "cocoop (per-image prompts)": [("cocoop", "colours", 1), ("cocoop", "shapes", 2)],
    "maple (coupled prompts)": [("maple", "colours", 1), ("maple", "shapes", 2)],
    "promptsrc (aggregated prompts)": [("promptsrc", "colours", 1), ("promptsrc", "colours", 2)],
}


@pytest.mark.parametrize("pack", list(PACKS))
def test_each_packed_run_equals_the_run_alone(tiny, pack):
    packed = train_packed([spec(tiny, *run) for run in PACKS[pack]])
    for run, result in zip(PACKS[pack], packed):
        s = spec(tiny, *run)
        alone = train(s.method, s.model, s.dataset, s.classnames, s.config)
        assert_same_run(result, alone)
    # and the runs really differ from one another (a pack that trained one run R times would fail above)
    first = packed[0].prompts
    assert any(not torch.allclose(first[k], r.prompts[k]) for r in packed[1:] for k in first if k in r.prompts)


def test_a_pack_of_one_is_bitwise_the_run_alone(tiny):
    (packed,) = train_packed([spec(tiny, "prompt_ot", "colours", 1)])
    s = spec(tiny, "prompt_ot", "colours", 1)
    alone = train(s.method, s.model, s.dataset, s.classnames, s.config)
    assert all(torch.equal(packed.prompts[k], alone.prompts[k]) for k in alone.prompts)
    assert [h["loss"] for h in packed.history] == [h["loss"] for h in alone.history]


def test_packed_forwards_equal_each_models_own_forward(tiny):
    specs = [spec(tiny, "prompt_ot", "colours", 1), spec(tiny, "prompt_ot", "shapes", 2)]
    models = [s.model for s in specs]
    for s in specs:
        s.model.set_classnames(s.classnames)
        with torch.no_grad():  # make the two runs' prompts clearly different
            for p in s.model.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.5)
    images = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        together = packed_image_features(models, images, [3, 4])
        texts = packed_class_text_features(models)
        assert torch.allclose(together[:3], models[0].image_features(images[:3]), atol=1e-6)
        assert torch.allclose(together[3:], models[1].image_features(images[3:]), atol=1e-6)
        assert not torch.allclose(together[3:], models[0].image_features(images[3:]), atol=1e-3)
        for model, text in zip(models, texts):
            assert text.shape == (len(model.classnames), together.shape[1])
            assert torch.allclose(text, model.class_text_features(), atol=1e-6)


def test_a_killed_pack_resumes_packed_or_alone_to_the_same_result(tiny, tmp_path):
    runs = PACKS["datasets"]
    uninterrupted = train_packed([spec(tiny, *run) for run in runs])
    train_packed([spec(tiny, *run, tmp=tmp_path / str(i)) for i, run in enumerate(runs)], stop_after_epoch=1)
    resumed = train_packed([spec(tiny, *run, tmp=tmp_path / str(i)) for i, run in enumerate(runs)])
    assert [r.resumed_from_epoch for r in resumed] == [1, 1]
    for a, b in zip(resumed, uninterrupted):
        assert_same_run(a, b)
    # a run's checkpoint is the same file format as an unpacked run's: it resumes alone too
    train_packed([spec(tiny, *run, tmp=tmp_path / f"x{i}") for i, run in enumerate(runs)], stop_after_epoch=2)
    s = spec(tiny, *runs[1], tmp=tmp_path / "x1")
    alone = train(s.method, s.model, s.dataset, s.classnames, s.config, checkpoint_dir=s.checkpoint_dir)
    assert alone.resumed_from_epoch == 2
    assert_same_run(alone, uninterrupted[1])


def test_runs_that_cannot_share_a_pack_are_refused(tiny):
    with pytest.raises(UserError, match="same prompt layout"):
        train_packed([spec(tiny, "prompt_ot", "colours", 1), spec(tiny, "coop", "colours", 1)])
    with pytest.raises(UserError, match="same training recipe"):
        train_packed([spec(tiny, "prompt_ot", "colours", 1), spec(tiny, "prompt_ot", "colours", 2, lr=0.02)])
    with pytest.raises(UserError, match="fp16"):
        train_packed(
            [
                spec(tiny, "prompt_ot", "colours", 1, precision="fp16"),
                spec(tiny, "prompt_ot", "colours", 2, precision="fp16"),
            ]
        )
    other = tiny_clip()
    lonely = spec(tiny, "prompt_ot", "colours", 2)
    lonely.model = build_model(lonely.method, other[0], other[1], seed=2)
    with pytest.raises(UserError, match="share one backbone"):
        train_packed([spec(tiny, "prompt_ot", "colours", 1), lonely])


def test_zeroshot_in_a_pack_is_untouched(tiny):
    results = train_packed([spec(tiny, "zeroshot", "colours", 1), spec(tiny, "prompt_ot", "colours", 1)])
    assert results[0].history == [] and results[1].history


def test_the_train_command_packs_seeds_into_one_process_with_each_runs_outputs(tmp_path):
    """Two seeds through one `train` command: each run folder gets what a single-seed command writes, with
    prompts within the stated tolerance and metrics/train accuracy equal, and MLflow records (here deferred)."""
    import json

    import yaml

    from prompt_ot.checkpoint import load_prompts
    from prompt_ot.cli import main
    from tests.support.cli import argv, manifest_and_cache
    from tests.support.data import make_fixture
    from tests.support.params import shrunk_params

    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 2))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(shrunk_params("paper")))
    manifests = [tmp_path / f"manifest{seed}.json" for seed in (1, 2)]
    caches = [tmp_path / f"cache{seed}" for seed in (1, 2)]
    for seed, manifest, cache in zip((1, 2), manifests, caches):
        manifest_and_cache(root, manifest, cache, seed=seed, epochs=2)
    common = argv("train", params=params, protocol="base2novel", method="prompt_ot", device="cpu")
    packed = [tmp_path / "packed" / "seed1", tmp_path / "packed" / "seed2"]
    assert main(common + argv(seed=[1, 2], manifest=manifests, train_cache=caches, out=packed)) == 0
    for k, seed in enumerate((1, 2)):
        alone = tmp_path / "alone" / f"seed{seed}"
        assert main(common + argv(seed=seed, manifest=manifests[k], train_cache=caches[k], out=alone)) == 0
        a, _ = load_prompts(alone / "prompts.safetensors")
        p, _ = load_prompts(packed[k] / "prompts.safetensors")
        assert all(torch.allclose(a[n], p[n], rtol=0, atol=PROMPT_TOL) for n in a)
        summary_a, summary_p = (json.loads((d / "train.json").read_text()) for d in (alone, packed[k]))
        assert summary_p["seed"] == seed and summary_p["packed_with"] == 1 and summary_a["packed_with"] == 0
        for ha, hp in zip(summary_a["history"], summary_p["history"]):
            assert hp["loss"] == pytest.approx(ha["loss"], rel=LOSS_TOL)
            assert hp["train_accuracy"] == ha["train_accuracy"]
        pending = json.loads((packed[k] / "mlflow_pending_train.json").read_text())
        assert f"seed{seed}" in json.dumps(pending)
        # what MLflow gets: the resolved determinism switch, precision and device of the run, and the pack size
        logged = pending["params"]
        assert logged["resolved.deterministic"] == "False" and logged["resolved.precision"] == "fp32"
        assert logged["resolved.device"] == "cpu" and logged["pack"] == "2"
    # packed runs need one value of each per run
    assert main(common + argv(seed=[1, 2], manifest=manifests[0], train_cache=caches, out=packed)) == 2


def test_the_evaluate_command_evaluates_seeds_in_one_process_to_the_bytes_of_each_alone(tmp_path, capsys):
    """Two seeds' IVLP prompts through one `evaluate` command: each seed's metrics.json and predictions.npz have the
    bytes its own command writes. A pack with a value missing, a seed twice, or one seed's prompts of another run is
    refused with one message before anything is written."""
    import yaml

    from prompt_ot.cli import main
    from tests.support.cli import TINY_CPU, argv, evaluate_argv, manifest_and_cache
    from tests.support.data import make_fixture
    from tests.support.params import shrunk_params

    root = tmp_path / "data"
    make_fixture("dtd", root, num_classes=4, per_split=(4, 1, 3))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(shrunk_params("paper")))
    prompts = []
    for seed in (1, 2):
        manifest, cache, run = tmp_path / f"manifest{seed}.json", tmp_path / f"cache{seed}", tmp_path / f"run{seed}"
        manifest_and_cache(root, manifest, cache, seed=seed, epochs=2)
        train = argv("train", params=params, protocol="base2novel", method="ivlp", seed=seed, device="cpu")
        assert main(train + argv(manifest=manifest, train_cache=cache, out=run)) == 0
        prompts.append(run / "prompts.safetensors")
    tests = tmp_path / "test"
    assert main(argv("cache", "test", "dtd", params=params, root=root, out=tests / "dtd", **TINY_CPU)) == 0
    alone = [tmp_path / "alone" / f"seed{seed}" / "metrics.json" for seed in (1, 2)]
    for seed, file, out in zip((1, 2), prompts, alone):
        assert main(evaluate_argv(params, "ivlp", file, tests, out, seed=seed)) == 0
    packed = [tmp_path / "packed" / f"seed{seed}" / "metrics.json" for seed in (1, 2)]
    capsys.readouterr()
    assert main(evaluate_argv(params, "ivlp", prompts, tests, packed, seed=[1, 2])) == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    for a, p in zip(alone, packed):
        assert a.read_bytes() == p.read_bytes()
        assert a.with_name("predictions.npz").read_bytes() == p.with_name("predictions.npz").read_bytes()
    assert alone[0].read_bytes() != alone[1].read_bytes()  # two seeds, two results
    refused = [tmp_path / "refused" / f"seed{seed}" / "metrics.json" for seed in (1, 2)]
    for options, words in [
        ({"seed": [1, 2], "prompts": prompts[:1]}, "2 --seed but 1 --prompts"),
        ({"seed": [1, 1]}, "names a seed twice"),
        ({"seed": [1, 2], "prompts": prompts[::-1]}, "seed 2"),  # seed 1's slot holds seed 2's prompts
    ]:
        run = {"prompts": prompts, "out": refused} | options
        rc = main(evaluate_argv(params, "ivlp", run["prompts"], tests, run["out"], seed=options["seed"]))
        err = capsys.readouterr().err
        assert rc == 2 and words in err and err.count("error:") == 1, err
        assert not (tmp_path / "refused").exists()


@pytest.mark.gpu
def test_a_packed_gpu_step_has_no_host_synchronisation(tiny):
    """bf16, fused SGD, device augmentation and the device OT plan: one stream of GPU work per step."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from prompt_ot.train import _packed_step, _Run

    device = torch.device("cuda")
    specs = [spec(tiny, "prompt_ot", "colours", seed, precision="bf16", device="cuda") for seed in (1, 2)]
    runs = [_Run(s, device) for s in specs]
    for run in runs:
        run.begin_epoch(0, device)
    _packed_step(runs, 0, device, "bf16", {}, True)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _packed_step(runs, 0, device, "bf16", {}, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(run.sums["loss"]).item() for run in runs)
