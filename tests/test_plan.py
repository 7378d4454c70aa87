"""`python -m prompt_ot plan`: the cost model's memory estimate against the measured peak of a real training step,
the grid's job counts, the advice for a job that does not fit, bad option values, and the wall-time bounds."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import yaml

from prompt_ot.cli import main
from prompt_ot.config import load_params
from prompt_ot.errors import UserError
from prompt_ot.methods import get_method
from prompt_ot.plan import (
    backbone_shape,
    build_plan,
    class_names,
    class_tokens,
    estimate,
    job_shape,
    measure_step,
    parse_memory,
    wall_time,
)
from prompt_ot.train import TrainConfig
from tests.support.params import few_shot_variant_grid, shrunk_params
from tests.support.workflow import ROOT


def random_clip(name: str):
    """The backbone with seeded random weights, frozen, in eval mode, and its tokenizer (as the pipeline builds it)."""
    from prompt_ot.models.backbone import load_backbone

    clip, tokenizer, _ = load_backbone(name, "none")
    return clip, tokenizer


def estimated_step_peak(name: str, method, classes: int, batch: int, tokenizer) -> float:
    """The model's estimate of the measured step: its class names' tokens, a frozen image forward each step (no
    feature cache), float32, resident memory excluded (as the meter excludes it)."""
    job = job_shape(method, TrainConfig(batch_size=batch), classes, frozen_image_forward=True)
    job = replace(job, class_tokens=class_tokens(tokenizer, class_names(classes)))
    return estimate(backbone_shape(name), job).step_peak


def check_within(name, clip, tokenizer, method_name, classes, batch):
    method = get_method(method_name)
    measured, _ = measure_step(method, clip, tokenizer, backbone_shape(name).image_size, classes, batch)
    estimated = estimated_step_peak(name, method, classes, batch, tokenizer)
    assert measured > 0
    error = estimated / measured - 1
    assert abs(error) <= 0.25, f"{name} {method_name} C={classes} B={batch}: estimated {estimated:.0f} B, " + (
        f"measured {measured} B ({error:+.0%})"
    )


@pytest.fixture(scope="module")
def tiny():
    return random_clip("tiny-vit")


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("method_name", ["coop", "ivlp", "prompt_ot", "maple"])
def test_the_memory_estimate_is_within_25_percent_of_a_measured_step_tiny(tiny, method_name, classes):
    check_within("tiny-vit", *tiny, method_name, classes, 32)


@pytest.mark.slow
@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("method_name", ["coop", "ivlp", "prompt_ot"])
def test_the_memory_estimate_is_within_25_percent_of_a_measured_step_vit_b16(method_name, classes):
    clip, tokenizer = _vit_b16()
    check_within("ViT-B-16-quickgelu", clip, tokenizer, method_name, classes, 2)


_VIT = {}


def _vit_b16():
    if not _VIT:
        _VIT["model"] = random_clip("ViT-B-16-quickgelu")
    return _VIT["model"]


def test_the_meter_counts_what_a_step_allocates_not_the_parameters():
    """A view of a parameter allocates nothing; a new tensor is counted once and released when freed."""
    import torch

    from prompt_ot.plan import LiveTensorMeter

    weight = torch.zeros(1000, 1000)
    with LiveTensorMeter() as meter:
        _ = weight.t()
        x = torch.ones(250, 1000)  # 1 MB
        y = x * 2  # 1 MB more
        del x, y
        z = torch.ones(100)
    assert meter.peak == 2 * 250 * 1000 * 4
    assert meter.live == z.untyped_storage().nbytes()


# ------------------------------------------------------------------ job counts
def test_the_paper_grids_job_counts_are_the_workflows():
    plan = build_plan(load_params(ROOT / "params.yaml"), str(ROOT / "params.yaml"))
    totals = {stage: sum(per.values()) for stage, per in plan.counts().items()}
    # tests/test_workflow.py: 15 downloads + 1 backbone + 15 test caches + 36 splits + 36 train caches
    # + 11 methods x 12 trained runs x 3 seeds + 11 x 3 x 13 evaluations + 1 report
    assert totals == {
        "download": 15,
        "backbone": 1,
        "cache test": 15,
        "split": 36,
        "cache train": 36,
        "train": 11 * 12 * 3,
        "evaluate": 11 * 3 * 13,
        "report": 1,
    }
    assert len(plan.jobs) == 15 + 1 + 15 + 36 + 36 + 11 * 12 * 3 + 11 * 3 * 13 + 1
    assert plan.counts()["evaluate"] == {"base2novel": 11 * 3 * 11, "cross_dataset": 33, "domain_generalization": 33}
    assert not plan.unknown


def test_a_shrunken_grid_with_few_shot_a_variant_and_packing_is_counted_as_the_workflows_count_it():
    params = few_shot_variant_grid()
    from prompt_ot.config import validate_params

    validate_params(params)
    totals = {stage: sum(per.values()) for stage, per in build_plan(params).counts().items()}
    # tests/test_workflow.py's count of the same grid's train jobs
    assert totals["train"] == 6 * 2 * (1 + 1) + 2 * 2 * 2
    assert totals["split"] == totals["cache train"] == (1 + 1 + 2) * 2
    assert totals["download"] == totals["cache test"] == 3
    assert totals["evaluate"] == 6 * 2 * 2 + 2 * 2 * 2
    params["train"]["pack"] = True
    assert sum(build_plan(params).counts()["train"].values()) == 6 * 2 + 2 * 2  # one job per seed pack
    seconds = sum(job.seconds for job in build_plan(params).jobs if job.stage == "evaluate")
    params["evaluate"] = {**params.get("evaluate", {}), "pack": True}
    packed = [job for job in build_plan(params).jobs if job.stage == "evaluate"]
    assert len(packed) == 6 * 2 + 2 * 2 and sum(job.seconds for job in packed) == pytest.approx(seconds)


# ------------------------------------------------------------------ memory advice
def _write(tmp_path, params) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_a_job_that_does_not_fit_is_flagged_and_the_suggested_batch_makes_it_fit(tmp_path, capsys):
    params = shrunk_params("paper", methods=["ivlp"], train={"batch_size": 8192})
    path = _write(tmp_path, params)
    assert main(["plan", "--params", path, "--gpu-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    flagged = [line for line in out.splitlines() if line.startswith("does not fit in")]
    assert len(flagged) == 1 and "ivlp" in flagged[0], out
    assert "DOES NOT FIT" in out
    advice = flagged[0].split("it fits with ", 1)[1]
    assert "train: {batch_size: " in advice
    batch = int(advice.split("train: {batch_size: ", 1)[1].split("}", 1)[0])
    assert 1 <= batch < 8192
    plan = build_plan(load_params(path), path, memory=parse_memory("1GB"))
    (kind,) = [k for k in plan.kinds.values() if k.method == "ivlp"]
    assert kind.estimate.peak > 10**9 and kind.fits is False
    # applying the advice: the batch it names fits, the next larger one does not (the largest that fits)
    params["train"]["batch_size"] = batch
    path = _write(tmp_path, params)
    assert main(["plan", "--params", path, "--gpu-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "every training job fits in" in out and "DOES NOT FIT" not in out, out
    params["train"]["batch_size"] = batch + 1
    plan = build_plan(load_params(_write(tmp_path, params)), memory=parse_memory("1GB"))
    assert [k.fits for k in plan.kinds.values() if k.method == "ivlp"] == [False]


def test_fp16_and_text_chunks_are_named_when_they_make_a_job_fit():
    """Many classes with text prompts: chunking the text encoder fits where the whole class set does not."""
    shape = backbone_shape("ViT-B-16-quickgelu")
    job = job_shape(get_method("prompt_ot"), TrainConfig(batch_size=4, precision="fp32"), 20000)
    from prompt_ot.plan import fitting_settings

    limit = parse_memory("16GB")
    assert estimate(shape, job).peak > limit
    advice = fitting_settings(shape, job, limit)
    chunks = [a for a in advice if a.startswith("train: {text_chunk: ")]
    assert chunks, advice
    chunk = int(chunks[0].split(": ")[2].rstrip("}"))
    assert estimate(shape, replace(job, text_chunk=chunk)).peak <= limit
    assert not any("batch_size" in a for a in advice)  # the classes, not the batch, fill the memory


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--gpus", "0", "positive integer"),
        ("--gpus", "-2", "positive integer"),
        ("--gpus", "two", "--gpus"),
        ("--gpu-memory", "lots", "not a memory size"),
        ("--gpu-memory", "0GB", "not a memory size"),
        ("--gpu-memory", "-24GB", "expected one argument"),  # argparse reads it as an option
        ("--gpu-memory", "24XB", "not a memory size"),
        ("--gpu-memory", "nanGB", "not a memory size"),
    ],
)
def test_a_bad_gpus_or_gpu_memory_value_is_one_clear_message(tmp_path, capsys, option, value, words):
    path = _write(tmp_path, shrunk_params("paper"))
    assert main(["plan", "--params", path, option, value]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0] and words in lines[0], err


@pytest.mark.parametrize(
    "text, expected",
    [("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("16G", 16 * 2**30), ("80000MB", 8 * 10**10), ("1.5 gib", 3 * 2**29)],
)
def test_memory_sizes_parse(text, expected):
    assert parse_memory(text) == expected


def test_a_bad_memory_size_names_the_forms_accepted():
    with pytest.raises(UserError, match="e.g. 24GB, 24GiB, 16G or 80000MB"):
        parse_memory("24 bananas")


# ------------------------------------------------------------------ wall time
def test_the_wall_time_on_n_gpus_is_between_total_over_n_and_total():
    plan = build_plan(load_params(ROOT / "params.yaml"), str(ROOT / "params.yaml"))
    durations = [job.seconds for job in plan.jobs if job.seconds > 0]
    total = sum(durations)
    assert total > 0
    rng = random.Random(0)
    cases = [(durations, n) for n in (1, 2, 3, 8, 1000)]
    cases += [([rng.expovariate(1.0) for _ in range(rng.randint(1, 30))], rng.randint(1, 12)) for _ in range(200)]
    for items, devices in cases:
        wall, whole = wall_time(items, devices), sum(items)
        assert whole / devices <= wall * (1 + 1e-12) and wall <= whole * (1 + 1e-12)
        assert wall >= max(items)
    assert math.isclose(wall_time(durations, 1), total)


def test_the_command_prints_the_counts_and_the_totals(tmp_path, capsys):
    path = _write(tmp_path, shrunk_params("paper"))
    assert main(["plan", "--params", path, "--gpus", "2", "--precision-check"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "GPU-hours" in out and "wall time on 2 GPU(s)" in out
    assert "in fp32:" in out and "in bf16:" in out and "in fp16:" in out
    assert "not measured here" in out
