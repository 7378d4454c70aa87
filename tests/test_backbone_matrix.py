"""The backbone matrix (prompt_ot/models/matrix.py, docs/backbones.md): which open_clip backbone runs which method.

Every cell the matrix supports is run: the backbone's family is built from its open_clip config with 2 layers per
tower and narrower widths (random weights), one training step of each method gives a finite loss and finite
gradients on the prompt parameters alone, and evaluation gives finite logits. Every cell it refuses is refused when
params.yaml is validated, with the message the matrix gives. The docs table is the code's.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prompt_ot.config import validate_params
from prompt_ot.errors import UserError
from prompt_ot.evaluate import evaluate
from prompt_ot.methods import METHODS, build_model, get_method
from prompt_ot.models import matrix
from prompt_ot.models.backbone import shipped_configs
from prompt_ot.train import TrainConfig, train
from tests.support.models import ToyImages, shrunk_backbone, tiny_clip
from tests.support.params import shrunk_params

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red thing", "a rather long class name with many words in it"]
SUPPORTED_ROWS = [name for name in matrix.TABLE_BACKBONES if any(matrix.decide(name, m).supported for m in METHODS)]
REFUSED_ROWS = [name for name in matrix.TABLE_BACKBONES if not all(matrix.decide(name, m).supported for m in METHODS)]
# every other model the rules accept: one method of each distinct prompt layout (what the backbone is asked for)
OTHER_SUPPORTED = [
    name
    for name in matrix.model_configs()
    if name not in matrix.TABLE_BACKBONES and any(matrix.decide(name, m).supported for m in METHODS)
]
LAYOUTS = list({method.prompts: name for name, method in reversed(METHODS.items())}.values())


def _one_step_and_evaluate(method, clip, tokenizer, image_size: int) -> None:
    """One training step of ``method`` through the trainer (``prompt_ot.train.train``: one epoch of one batch), then
    the checks: a finite loss, a finite gradient on every prompt parameter and none on the frozen backbone, and
    finite logits of a few images against the class names through ``prompt_ot.evaluate.evaluate``'s path."""
    model = build_model(method, clip, tokenizer, seed=1)
    images = ToyImages(1, len(CLASSES), size=image_size)  # one batch of 2 images: one step
    config = TrainConfig(epochs=1, batch_size=len(images), warmup_epochs=0, device="cpu")
    before = model.prompt_state()
    result = train(method, model, images, CLASSES, config)
    where = f"{method.name} on {clip.visual.__class__.__name__} {image_size}px"
    if method.trains:
        assert len(result.history) == 1 and math.isfinite(result.history[0]["loss"]), where
        prompts = model.trainable_parameters()
        assert prompts, where
        for p in prompts:
            assert p.grad is not None and torch.isfinite(p.grad).all(), where
        assert any(bool(p.grad.abs().sum() > 0) for p in prompts), where
        assert all(p.grad is None and not p.requires_grad for p in clip.parameters()), where
        assert {n.split(".")[0] for n in before} <= {"text_prompts", "vision_prompts", "couplings", "meta_net"}, where
        assert any(not torch.equal(before[n], v) for n, v in model.prompt_state().items()), where
    else:
        assert result.history == [] and before == {}, where
    batch = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (len(images), len(CLASSES)) and torch.isfinite(logits).all(), where
    evaluation = evaluate(model, images, CLASSES, batch_size=len(images))
    assert evaluation.n == len(images) and torch.equal(evaluation.predictions, logits.argmax(-1)), where


# ---------------------------------------------------------------------------------------------- supported cells
@pytest.mark.parametrize("name", SUPPORTED_ROWS)
def test_every_supported_cell_of_the_table_trains_a_step_and_evaluates(name):
    clip, tokenizer, size = shrunk_backbone(name)
    assert len(clip.transformer.resblocks) == 2
    cells = [method for method_name, method in METHODS.items() if matrix.decide(name, method_name).supported]
    assert cells
    for method in cells:
        _one_step_and_evaluate(method, clip, tokenizer, size)


@pytest.mark.parametrize("name", OTHER_SUPPORTED)
def test_every_other_model_the_matrix_accepts_trains_each_prompt_layout(name):
    assert {METHODS[m].prompts for m in LAYOUTS} == {m.prompts for m in METHODS.values()}
    clip, tokenizer, size = shrunk_backbone(name)
    for method_name in LAYOUTS:
        if matrix.decide(name, method_name).supported:
            _one_step_and_evaluate(METHODS[method_name], clip, tokenizer, size)


def test_maple_couplings_map_the_text_width_to_the_vision_width_of_vit_l_14():
    config = matrix.model_config("ViT-L-14")
    text_width, vision_width = config["text_cfg"]["width"], config["vision_cfg"]["width"]
    assert (text_width, vision_width) == (768, 1024)
    clip, tokenizer, size = shrunk_backbone("ViT-L-14", width_divisor=1)  # 2 layers, the real widths
    maple = get_method("maple")
    model = build_model(maple, clip, tokenizer)
    assert len(model.couplings) == 2  # one per prompted depth, capped at the 2 layers
    for coupling in model.couplings:
        assert (coupling.in_features, coupling.out_features) == (text_width, vision_width)
    assert all(tuple(p.shape) == (maple.prompts.vision_ctx, vision_width) for p in model.vision_prompt_tensors())
    _one_step_and_evaluate(maple, clip, tokenizer, size)


def test_the_shipped_configs_are_supported_for_every_method():
    assert set(shipped_configs()) <= set(matrix.TABLE_BACKBONES)
    for name in shipped_configs():
        assert matrix.describe(name).blockers == ()
        assert all(matrix.decide(name, m).supported for m in METHODS)


def test_the_text_only_methods_are_those_whose_model_has_no_vision_prompts():
    clip, tokenizer, _ = tiny_clip()
    for name, method in METHODS.items():
        model = build_model(method, clip, tokenizer)
        assert matrix.needs_vision_prompts(method) == bool(model.vision_prompt_tensors()), name
    assert matrix.text_only_methods() == ["zeroshot", "coop", "cocoop", "kgcoop"]
    assert matrix.needs_vision_prompts(METHODS["prompt_ot_text"]) and matrix.needs_vision_prompts(
        METHODS["pointwise_l1"]
    )  # deep prompts in both towers; only their regulariser is on one side


# ---------------------------------------------------------------------------------------------- refused cells
def _paper(name: str, methods: list[str], **overrides) -> dict:
    return shrunk_params("paper", backbone={"name": name, "pretrained": "none"}, methods=methods, **overrides)


@pytest.mark.parametrize("name", REFUSED_ROWS)
def test_every_refused_cell_of_the_table_is_refused_when_params_are_validated(name):
    for method in METHODS:
        verdict = matrix.decide(name, method)
        if verdict.supported:
            validate_params(_paper(name, [method]))
            continue
        assert name in verdict.reason and method in verdict.reason and "use a ViT-* backbone" in verdict.reason
        with pytest.raises(UserError) as refused:
            validate_params(_paper(name, [method]), "grid.yaml")
        assert str(refused.value) == f"grid.yaml: backbone.name = {name!r}: {verdict.reason}"


def test_a_refusal_names_every_method_of_the_grid_it_cannot_run():
    with pytest.raises(UserError) as refused:
        validate_params(_paper("ViT-B-16-SigLIP", ["coop", "maple", "prompt_ot"]))
    message = str(refused.value)
    assert "backbone.name = 'ViT-B-16-SigLIP'" in message
    assert "ViT-B-16-SigLIP cannot run coop, maple, prompt_ot: its image tower is the timm model" in message
    assert "no causal mask" in message and "use a ViT-* backbone" in message and "ViT-B-16-quickgelu" in message


def test_a_backbone_without_a_vision_transformer_would_run_only_the_text_only_methods(monkeypatch):
    """The rule in force once prompted.py encodes a ResNet image tower (matrix.FROZEN_IMAGE_TOWERS): coop, and a
    variant without vision prompts, run on RN50; maple, and a variant that adds vision prompts, are refused."""
    monkeypatch.setattr(matrix, "FROZEN_IMAGE_TOWERS", frozenset({"resnet"}))
    assert matrix.describe("RN50").blockers == ()
    variants = {
        "prompt_ot_textonly": {"method": "prompt_ot", "prompts": {"vision_depth": 0, "vision_ctx": 0}},
        "coop_seeing": {"method": "coop", "prompts": {"vision_depth": 1, "vision_ctx": 2}},
    }
    validate_params(_paper("RN50", ["zeroshot", "coop", "cocoop", "kgcoop", "prompt_ot_textonly"], variants=variants))
    with pytest.raises(UserError) as refused:
        validate_params(_paper("RN50", ["coop", "maple", "coop_seeing"], variants=variants))
    assert str(refused.value) == (
        "params.yaml: backbone.name = 'RN50': RN50 has no vision transformer, so the vision prompts of maple, "
        "coop_seeing cannot be inserted; use a ViT-* backbone with CLIP's text transformer, such as "
        "ViT-B-16-quickgelu, ViT-B-32-quickgelu, or one of the text-only methods zeroshot, coop, cocoop, kgcoop"
    )


@pytest.mark.parametrize(
    "name, similar",
    [("ViT-B-61", "ViT-B-16"), ("vit-b-16-quickgelu", "ViT-B-16-quickgelu"), ("RN-50", "RN50"), ("zzz", None)],
)
def test_an_unknown_backbone_is_refused_with_the_known_names_like_it(name, similar):
    with pytest.raises(UserError) as refused:
        validate_params(_paper(name, ["coop"]))
    message = str(refused.value)
    assert message.startswith(f"params.yaml: backbone.name: unknown backbone {name!r}; known backbones")
    if similar is None:  # nothing alike: the usual backbones
        assert "none is like it" in message and "ViT-B-16-quickgelu" in message
    else:
        assert "like it: " in message and similar in message.split("like it: ")[1].split(" (")[0].split(", ")
    assert "convnext" not in message  # a short list, not all of open_clip's names


def test_a_refused_backbone_stops_the_first_stage_before_it_writes_anything(tmp_path, capsys):
    import yaml

    from prompt_ot.cli import main

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_paper("ViT-B-16-SigLIP", ["coop"])))
    out = tmp_path / "backbone"
    assert main(["backbone", "--params", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: backbone.name = 'ViT-B-16-SigLIP': ViT-B-16-SigLIP cannot run coop: " in err
    assert "Traceback" not in err and not out.exists()


def test_the_check_neither_imports_open_clip_nor_builds_a_model():
    """In a fresh process: checking every backbone open_clip knows against the whole method list reads config files
    only (open_clip, whose import takes seconds, stays unimported; no model is built) and takes well under a second."""
    script = (
        "import sys, time\n"
        "from prompt_ot.errors import UserError\n"
        "from prompt_ot.methods import METHODS, get_method\n"
        "from prompt_ot.models import matrix\n"
        "start = time.perf_counter()\n"
        "refused = 0\n"
        "for name in matrix.model_configs():\n"
        "    try:\n"
        "        params = {'backbone': {'name': name}, 'methods': list(METHODS), 'variants': {}}\n"
        "        matrix.check_backbone(params, {m: get_method(m) for m in METHODS})\n"
        "    except UserError:\n"
        "        refused += 1\n"
        "print(time.perf_counter() - start, refused, 'open_clip' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seconds, refused, imported = result.stdout.split()
    assert imported == "False" and 0 < int(refused) < len(matrix.model_configs()) and float(seconds) < 1.0


# ---------------------------------------------------------------------------------------------- the rules
def test_the_configs_read_are_open_clips_own():
    import open_clip

    from prompt_ot.models.backbone import register_shipped_configs

    register_shipped_configs()
    assert sorted(matrix.model_configs()) == sorted(open_clip.list_models())
    for name in open_clip.list_models():
        assert matrix.model_config(name) == open_clip.get_model_config(name), name


def test_the_verdict_comes_from_the_config_not_the_name(monkeypatch):
    configs = dict(matrix.model_configs())
    configs["RN-like-name"] = configs["ViT-B-16"]
    configs["vit-like-name"] = configs["RN50"]
    configs["ViT-B-16-dropout"] = {**configs["ViT-B-16"], "vision_cfg": {**configs["ViT-B-16"]["vision_cfg"]}}
    configs["ViT-B-16-dropout"]["vision_cfg"]["patch_dropout"] = 0.5
    configs["ViT-B-16-argmax"] = {**configs["ViT-B-16"], "text_cfg": {**configs["ViT-B-16"]["text_cfg"]}}
    configs["ViT-B-16-argmax"]["text_cfg"]["pool_type"] = "argmax"  # open_clip's default, spelt out
    monkeypatch.setattr(matrix, "model_configs", lambda: configs)
    assert matrix.decide("RN-like-name", "maple").supported
    resnet = matrix.decide("vit-like-name", "maple")
    assert not resnet.supported and "vit-like-name has no vision transformer" in resnet.reason
    dropout = matrix.decide("ViT-B-16-dropout", "coop")
    assert not dropout.supported and "vision_cfg.patch_dropout=0.5" in dropout.reason
    assert matrix.decide("ViT-B-16-argmax", "maple").supported


@pytest.mark.parametrize(
    "name, kind",
    [
        ("convnext_base", "timm image tower"),
        ("EVA02-B-16", "timm image tower"),
        ("ViT-B-16-SigLIP", "timm image tower"),
        ("coca_ViT-B-32", "CoCa"),
        ("xlm-roberta-base-ViT-B-32", "Hugging Face text tower"),
        ("ViT-L-14-CLIPA", "text transformer variant"),
        ("ViT-H-14-worldwide", "text transformer variant"),
    ],
)
def test_each_refused_family_is_refused_for_its_own_reason(name, kind):
    assert matrix.describe(name).blockers[0][0] == kind


# ---------------------------------------------------------------------------------------------- the docs
def test_the_docs_page_holds_the_codes_table():
    page = (ROOT / "docs" / "backbones.md").read_text(encoding="utf-8")
    assert matrix.generated_part(page) == matrix.markdown(), (
        "docs/backbones.md is out of date: replace its generated part with "
        "python -c 'from prompt_ot.models.matrix import markdown; print(markdown())'"
    )


def test_the_table_has_the_required_families_with_open_clips_tags():
    import open_clip

    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "RN50"):
        assert name in matrix.TABLE_BACKBONES
    for name in matrix.TABLE_BACKBONES:
        assert matrix.pretrained_tags(name) == open_clip.list_pretrained_tags_by_model(name), name
    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        tags = matrix.pretrained_tags(name)
        assert "openai" in tags and any(tag.startswith("laion") for tag in tags), name
    assert "openai" in matrix.pretrained_tags("ViT-L-14-336")
    table = matrix.markdown()
    for name in matrix.TABLE_BACKBONES:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        cells = row.strip("|").split("|")[2:]
        assert [c.strip() == "✓" for c in cells] == [matrix.decide(name, m).supported for m in METHODS], name


# ---------------------------------------------------------------------------------------------- full size
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_the_full_size_families_train_a_step_of_each_prompt_layout(name):
    from prompt_ot.models.backbone import load_backbone

    clip, tokenizer, preprocess = load_backbone(name)  # random weights: pretrained none
    config = matrix.model_config(name)
    assert len(clip.visual.transformer.resblocks) == config["vision_cfg"]["layers"]
    assert clip.visual.conv1.out_channels == config["vision_cfg"]["width"]
    for method_name in LAYOUTS:
        assert matrix.decide(name, method_name).supported
        _one_step_and_evaluate(METHODS[method_name], clip, tokenizer, preprocess.image_size)
