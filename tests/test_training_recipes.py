"""Training recipes as data: the released recipe of every (method, protocol), the shared one, overrides on top,
refusal of recipes that cannot run, and the frozen template a recipe or variant names taking effect."""

import copy

import pytest
import yaml

from prompt_ot.config import resolve_run, validate_params
from prompt_ot.errors import UserError
from prompt_ot.methods import METHODS
from prompt_ot.recipes import RECIPE_KEYS, RELEASED, TRAINED_PROTOCOLS, resolve_recipe
from tests.support.workflow import ROOT

# the released values, as docs/fidelity.md and ../shared/REFERENCE_PROTOCOL.md list them:
# (lr, batch, epochs, warm-up lr, tested epoch (0 = last), text depth, vision depth)
RELEASED_BASE2NOVEL = {
    "coop": (0.002, 32, 200, 1e-5, 0, 1, 0),
    "kgcoop": (0.002, 128, 100, 1e-5, 0, 1, 0),
    "ivlp": (0.0025, 4, 20, 1e-5, 0, 9, 9),
    "pointwise_l1": (0.0025, 4, 20, 1e-5, 0, 9, 9),
    "prompt_ot": (0.005, 4, 40, 1e-4, 31, 12, 12),
    "prompt_ot_vision": (0.005, 4, 40, 1e-4, 31, 12, 12),
    "prompt_ot_text": (0.005, 4, 40, 1e-4, 31, 12, 12),
}


def params(**changes):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        raw[key] = value
    return raw


def test_every_method_and_protocol_has_a_released_entry_with_its_source():
    for method in METHODS:
        for protocol in TRAINED_PROTOCOLS:
            entry = RELEASED[(method, protocol)]
            assert entry.source, (method, protocol)
            recipe = resolve_recipe("released", method, protocol, "dtd", 16)
            assert recipe.precision == "fp16" and recipe.momentum == 0.9 and recipe.weight_decay == 5e-4
            assert recipe.warmup_epochs == (1 if method != "zeroshot" else 0)
    # where nothing was released, the entry says what the suite uses instead
    for key in [
        ("kgcoop", "cross_dataset"),
        ("ivlp", "few_shot"),
        ("prompt_ot", "cross_dataset"),
        ("prompt_ot", "few_shot"),
        ("pointwise_l1", "base2novel"),
    ]:
        assert RELEASED[key].choice, key


@pytest.mark.parametrize("method", sorted(RELEASED_BASE2NOVEL))
def test_released_base_to_novel_recipes_are_the_authors(method):
    raw = params()
    resolved, recipe = resolve_run(raw, method, "base2novel", "dtd", 16)
    got = (
        recipe.lr,
        recipe.batch_size,
        recipe.epochs,
        recipe.warmup_lr,
        recipe.eval_epoch,
        resolved.prompts.text_depth,
        resolved.prompts.vision_depth,
    )
    assert got == RELEASED_BASE2NOVEL[method]
    assert resolved.prompts.ctx_init == "a photo of a" and resolved.prompts.text_ctx == 4


def test_released_recipes_of_cocoop_maple_and_promptsrc_are_the_authors():
    raw = params()
    cocoop, recipe = resolve_run(raw, "cocoop", "base2novel", "dtd", 16)
    assert (recipe.lr, recipe.batch_size, recipe.epochs, recipe.warmup_lr, recipe.precision) == (
        0.002,
        1,
        10,
        1e-5,
        "fp16",
    )
    assert (cocoop.prompts.text_ctx, cocoop.prompts.text_depth, cocoop.prompts.meta_net) == (4, 1, 16)
    assert resolve_run(raw, "cocoop", "cross_dataset", "imagenet", 16)[1].epochs == 10  # the same config on ImageNet
    maple, recipe = resolve_run(raw, "maple", "base2novel", "dtd", 16)
    assert (recipe.lr, recipe.batch_size, recipe.epochs) == (0.0035, 4, 5)
    p = maple.prompts
    assert (p.text_ctx, p.text_depth, p.vision_ctx, p.vision_depth, p.coupled) == (2, 9, 2, 9, True)
    assert (p.ctx_init, p.fixed_words) == ("a photo", "of a")  # "a photo of a" with 2 learnable tokens
    maple_xd, recipe = resolve_run(raw, "maple", "cross_dataset", "imagenet", 16)
    assert (recipe.lr, recipe.epochs, maple_xd.prompts.text_depth, maple_xd.prompts.vision_depth) == (0.0026, 2, 3, 3)
    src, recipe = resolve_run(raw, "promptsrc", "base2novel", "dtd", 16)
    assert (recipe.lr, recipe.batch_size, recipe.epochs, src.prompts.text_depth, src.prompts.vision_depth) == (
        0.0025,
        4,
        20,
        9,
        9,
    )
    assert src.aggregate == {"mean": 15, "std": 1} and src.frozen_template == "templates:imagenet_60"
    assert src.regulariser == {"kind": "promptsrc", "image_weight": 10.0, "text_weight": 25.0, "logit_weight": 1.0}
    src_xd, recipe = resolve_run(raw, "promptsrc", "cross_dataset", "imagenet", 16)
    assert (src_xd.prompts.text_depth, recipe.epochs, src_xd.aggregate) == (3, 20, {"mean": 6, "std": 10})
    few = {d: resolve_run(raw, "promptsrc", "few_shot", d, 4) for d in ("imagenet", "sun397", "dtd", "eurosat")}
    assert {d: m.aggregate for d, (m, _) in few.items()} == {
        "imagenet": {"mean": 30, "std": 30},
        "sun397": {"mean": 30, "std": 30},
        "dtd": {"mean": 45, "std": 5},
        "eurosat": {"mean": 45, "std": 5},
    }
    assert all(r.epochs == 50 for _, r in few.values())
    shared, recipe = resolve_run(params(recipe="shared"), "promptsrc", "base2novel", "dtd", 16)
    assert shared.aggregate == {"mean": 0.75, "std": 0.05, "relative": True} and recipe.epochs == 40
    assert max(range(40), key=shared.gpa_weights(40).__getitem__) + 1 == 30  # mean at 3/4 of the run


def test_an_aggregated_method_tested_before_its_last_epoch_is_refused():
    raw = params(variants={"src_early": {"method": "promptsrc", "train": {"eval_epoch": 10}}}, methods=["src_early"])
    with pytest.raises(UserError, match="aggregates its prompts.*eval_epoch to 0"):
        validate_params(raw)


def test_released_recipes_by_dataset_shots_and_protocol():
    raw = params()
    assert resolve_run(raw, "coop", "base2novel", "imagenet", 16)[1].epochs == 50  # CoOp on ImageNet
    coop_fs = {k: resolve_run(raw, "coop", "few_shot", "dtd", k) for k in (1, 2, 4, 8, 16)}
    assert {k: r.epochs for k, (_, r) in coop_fs.items()} == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    method = coop_fs[1][0]
    assert (method.prompts.text_ctx, method.prompts.ctx_init) == (16, None)  # 16 random context tokens
    assert resolve_run(raw, "coop", "few_shot", "imagenet", 16)[1].epochs == 50
    assert resolve_run(raw, "prompt_ot", "cross_dataset", "imagenet", 16)[1].eval_epoch == 11
    cross_l1, recipe = resolve_run(raw, "pointwise_l1", "cross_dataset", "imagenet", 16)
    assert (cross_l1.prompts.text_depth, recipe.epochs) == (3, 20)
    assert cross_l1.regulariser == {"kind": "pointwise_l1", "image_weight": 10.0, "text_weight": 25.0}
    kgcoop, _ = resolve_run(raw, "kgcoop", "base2novel", "oxford_pets", 16)
    assert kgcoop.regulariser["weight"] == 8.0
    assert kgcoop.frozen_template_for("a photo of a {}, a type of pet.") == "a photo of a {}, a type of pet."
    # domain generalisation evaluates the cross-dataset model, so it resolves the cross-dataset recipe
    assert resolve_run(raw, "prompt_ot", "domain_generalization", "imagenet", 16)[1].eval_epoch == 11


def test_the_shared_recipe_is_prompt_ots_for_every_method_with_its_own_layout():
    raw = params(recipe="shared")
    for name, default in METHODS.items():
        method, recipe = resolve_run(raw, name, "base2novel", "dtd", 16)
        assert method.prompts == default.prompts and method.regulariser == default.regulariser
        if name == "zeroshot":
            assert not recipe.trains
            continue
        assert (recipe.lr, recipe.batch_size, recipe.epochs, recipe.warmup_epochs, recipe.warmup_lr) == (
            0.005,
            4,
            40,
            1,
            1e-4,
        )
        assert recipe.eval_epoch == 0 and recipe.tested_epoch == 40 and recipe.precision == "fp16"


@pytest.mark.parametrize("recipe", ["released", "shared"])
def test_per_key_overrides_work_on_top_of_either_recipe(recipe):
    raw = params(recipe=recipe)
    raw["train"].update(epochs=12, precision="fp32", eval_epoch=0)
    raw["variants"] = {
        "ot_short": {"method": "prompt_ot", "regulariser": {"weight": 3.0}, "train": {"epochs": 6, "lr": 0.01}}
    }
    raw["methods"] = ["prompt_ot", "ot_short", "zeroshot"]
    validate_params(raw)
    _, base = resolve_run(raw, "prompt_ot", "base2novel", "dtd", 16)
    assert (base.epochs, base.precision, base.lr) == (12, "fp32", 0.005)
    assert base.overridden == ("epochs", "eval_epoch", "precision")
    variant, short = resolve_run(raw, "ot_short", "base2novel", "dtd", 16)
    assert (short.epochs, short.lr, short.precision, variant.regulariser["weight"]) == (6, 0.01, "fp32", 3.0)
    assert short.method == "prompt_ot"  # a variant takes its base method's recipe
    _, zeroshot = resolve_run(raw, "zeroshot", "base2novel", "dtd", 16)
    assert (zeroshot.epochs, zeroshot.precision) == (
        0,
        "fp32",
    )  # only the precision reaches a method that trains nothing


def test_a_recipe_that_cannot_run_is_refused_when_params_are_validated():
    raw = params()
    raw["train"]["epochs"] = 10  # Prompt-OT's released recipe tests the checkpoint after epoch 31
    with pytest.raises(
        UserError,
        match=r"prompt_ot on base2novel .*epoch 31 \(the released recipe\).* only 10 "
        r"epochs \(train.epochs\).*train.eval_epoch",
    ):
        validate_params(raw)
    raw["train"]["eval_epoch"] = 0
    validate_params(copy.deepcopy(raw))  # with the final epoch tested it runs
    raw["train"]["warmup_epochs"] = 10
    with pytest.raises(UserError, match=r"warmup_epochs = 10 \(train.warmup_epochs\) must be smaller than epochs = 10"):
        validate_params(raw)
    raw = params()
    raw["variants"] = {"coop_two": {"method": "coop", "prompts": {"text_ctx": 2}}}
    raw["methods"] = ["coop_two"]
    with pytest.raises(
        UserError, match=r"coop_two on base2novel.*ctx_init 'a photo of a' has 4 words but text_ctx is 2"
    ):
        validate_params(raw)
    raw = params()
    raw["variants"] = {"kg_odd": {"method": "kgcoop", "frozen_template": "a photo"}}
    with pytest.raises(UserError, match=r"variants.kg_odd: frozen_template 'a photo' must hold exactly one"):
        validate_params(raw)


def test_unknown_recipe_and_keys_are_refused():
    raw = params(recipe="authors")
    with pytest.raises(UserError, match=r"recipe = 'authors' is not allowed; use one of \['released', 'shared'\]"):
        validate_params(raw)
    raw = params()
    raw["variants"] = {"x": {"method": "ivlp", "train": {"lr_typo": 1}}}
    with pytest.raises(UserError, match=r"unknown key 'lr_typo' under variants.x.train"):
        validate_params(raw)
    raw = params()
    del raw["recipe"]
    with pytest.raises(UserError, match=r"'recipe' is a required property"):
        validate_params(raw)
    with pytest.raises(UserError, match="unknown recipe key"):
        resolve_recipe("shared", "ivlp", "base2novel", "dtd", 16, {"learning_rate": 1})
    assert set(RECIPE_KEYS) <= set(resolve_recipe("shared", "ivlp", "base2novel", "dtd", 16).to_dict())


def test_a_variants_frozen_template_reaches_the_run():
    """Today's variant ``frozen_template`` is what the run's frozen class texts use (the train command resolves it
    with the dataset's template; tests/test_train.py shows the trainer encodes it)."""
    raw = params()
    raw["variants"] = {
        "ot_itap": {"method": "prompt_ot", "frozen_template": "itap of a {}."},
        "kg_generic": {"method": "kgcoop", "frozen_template": "a photo of a {}."},
    }
    raw["methods"] = ["ot_itap", "kg_generic", "kgcoop"]
    validate_params(raw)
    pets = "a photo of a {}, a type of pet."
    for name, want in (("ot_itap", "itap of a {}."), ("kg_generic", "a photo of a {}."), ("kgcoop", pets)):
        method, _ = resolve_run(raw, name, "base2novel", "oxford_pets", 16)
        assert method.frozen_template_for(pets) == want, name
