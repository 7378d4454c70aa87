"""Training recipes as data: each method as its authors' released code trains it, and the equal-budget recipe.

A recipe is everything that decides a run besides its data and seed: the prompt layout (tokens, depth,
initialisation), the optimiser and schedule (lr, batch, epochs, warm-up), the precision, the evaluated
epoch and the method's own values (regulariser weights, the frozen template). ``params.yaml`` chooses one
with ``recipe:``; its ``train:`` block, and a variant's ``train:``, override single keys on top.

- ``released``: per (method, protocol), the values of the configs and scripts named in the entry's
  ``source`` (read from the public repositories; docs/fidelity.md lists them). Where nothing was released
  the entry says what this suite uses instead, and why (``choice``). The paper grid's default.
- ``shared``: every method under Prompt-OT's base-to-novel recipe (lr 0.005, batch 4, 40 epochs, one
  warm-up epoch at 1e-4, fp16), each with its own prompt layout (``prompt_ot.methods``), tested at the
  final epoch: the equal-budget comparison (the demo's, with its own overrides).

Every released recipe here runs on Dassl.pytorch: SGD (momentum 0.9, weight decay 5e-4), one constant
warm-up epoch, the cosine schedule of ``prompt_ot.train.learning_rate``, and ``PREC: fp16``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from prompt_ot.errors import UserError, unknown_name

RECIPE_NAMES = ("released", "shared")
TRAINED_PROTOCOLS = ("base2novel", "cross_dataset", "few_shot")
# the keys of a recipe that params.yaml's train block (or a variant's) may override
RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_lr",
    "precision",
    "eval_epoch",
)
DATASET_TEMPLATE = "dataset"  # a frozen template meaning "the dataset's zero-shot template"

DASSL = {
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "precision": "fp16",
    "eval_epoch": 0,
}
PROMPT_OT_B2N = {"lr": 0.005, "batch_size": 4, "epochs": 40, "warmup_lr": 1e-4}

_COOP = "KaiyangZhou/CoOp configs/trainers/CoOp/"
_PROMPTSRC = "muzairkhattak/PromptSRC configs/trainers/"
_PROMPT_OT_SOURCE = (
    "ChongQingNoSubway/Prompt-OT: its base-to-novel config (named 'ep20', it runs 40 epochs) and "
    "base-to-novel test script (loads the checkpoint after epoch 31)"
)


@dataclass(frozen=True)
class Entry:
    """One (method, protocol) of a recipe table: values on top of Dassl's defaults, and where they come from."""

    train: dict
    source: str
    prompts: dict = field(default_factory=dict)  # overrides of the method's prompt layout
    regulariser: dict = field(default_factory=dict)  # overrides of the regulariser's arguments
    frozen_template: str | None = None
    aggregate: dict | None = None  # Gaussian prompt aggregation (PromptSRC): {"mean", "std"} in epochs
    # dataset -> train overrides (e.g. CoOp's ImageNet epochs), and "aggregate" for a dataset's own aggregation
    by_dataset: dict = field(default_factory=dict)
    by_shots: tuple = ()  # ((smallest K, largest K, train overrides), ...)
    choice: str = ""  # where no recipe was released: what this suite uses and why
    trains: bool = True  # False: nothing is trained (zero-shot), only the precision applies


def _entry(train: dict, source: str, **kw) -> Entry:
    return Entry({**DASSL, **train}, source, **kw)


_COOP_B2N = _entry(
    {"lr": 0.002, "batch_size": 32, "epochs": 200},
    _COOP + "vit_b16_ctxv1.yaml (ImageNet: "
    "vit_b16_ep50_ctxv1.yaml), the CoOp recipe of CoCoOp's base-to-novel comparison",
    by_dataset={"imagenet": {"epochs": 50}},
)
_KGCOOP_B2N = _entry(
    {"lr": 0.002, "batch_size": 128, "epochs": 100},
    "htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml, scripts/base2new_train.sh "
    "(W 8.0), trainers/kgcoop.py (frozen targets from the dataset's template)",
    regulariser={"weight": 8.0},
    frozen_template=DATASET_TEMPLATE,
)
_IVLP_B2N = _entry(
    {"lr": 0.0025, "batch_size": 4, "epochs": 20},
    _PROMPTSRC + "IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
    prompts={"text_depth": 9, "vision_depth": 9},
)
_PROMPTSRC_TERMS = {"image_weight": 10.0, "text_weight": 25.0}
_COCOOP = _entry(
    {"lr": 0.002, "batch_size": 1, "epochs": 10},
    "KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml (meta-net 512-32-512)",
)
_MAPLE_REPO = "muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/"
_MAPLE_B2N = _entry(
    {"lr": 0.0035, "batch_size": 4, "epochs": 5},
    _MAPLE_REPO + "vit_b16_c2_ep5_batch4_2ctx.yaml",
    prompts={"text_depth": 9, "vision_depth": 9},
)
_PROMPTSRC_B2N = _entry(
    {"lr": 0.0025, "batch_size": 4, "epochs": 20},
    _PROMPTSRC + "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (GPA mean 15, std 1)",
    prompts={"text_depth": 9, "vision_depth": 9},
    regulariser=_PROMPTSRC_TERMS,
    aggregate={"mean": 15, "std": 1},
)
# few-shot GPA: mean 30, std 30 on these datasets, mean 45, std 5 on the others (PromptSRC's few-shot configs)
_PROMPTSRC_FEW_SHOT_WIDE = ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397")
_PROMPT_OT = {
    "base2novel": _entry({**PROMPT_OT_B2N, "eval_epoch": 31}, _PROMPT_OT_SOURCE),
    "cross_dataset": _entry(
        {**PROMPT_OT_B2N, "eval_epoch": 11},
        "ChongQingNoSubway/Prompt-OT: cross-dataset test script (loads the checkpoint after epoch 11)",
        choice="its cross-dataset training config is not shipped (the script takes it as an "
        "argument): the base-to-novel config, tested after epoch 11 as its script does",
    ),
    "few_shot": _entry(
        PROMPT_OT_B2N,
        _PROMPT_OT_SOURCE,
        choice="no few-shot recipe released: the base-to-novel config, tested at the final epoch",
    ),
}
_NONE_RELEASED = "no {protocol} recipe released: {method}'s base-to-novel recipe"

_ZEROSHOT = _entry(
    {"lr": 0.0, "batch_size": 0, "epochs": 0, "warmup_epochs": 0, "warmup_lr": 0.0},
    "KaiyangZhou/CoOp trainers/zsclip.py (CLIP as clip.load builds it, in fp16; the dataset's template)",
    trains=False,
)

RELEASED: dict[tuple[str, str], Entry] = {
    **{("zeroshot", p): _ZEROSHOT for p in TRAINED_PROTOCOLS},
    ("coop", "base2novel"): _COOP_B2N,
    ("coop", "cross_dataset"): _entry({"lr": 0.002, "batch_size": 32, "epochs": 50}, _COOP + "vit_b16_ep50_ctxv1.yaml"),
    ("coop", "few_shot"): _entry(
        {"lr": 0.002, "batch_size": 32, "epochs": 200},
        _COOP + "vit_b16_ep50.yaml, vit_b16_ep100.yaml, vit_b16.yaml by shots; scripts/coop/main.sh (16 context "
        "tokens, random initialisation)",
        prompts={"text_ctx": 16, "ctx_init": None},
        by_dataset={"imagenet": {"epochs": 50}},
        by_shots=((1, 1, {"epochs": 50}), (2, 4, {"epochs": 100}), (8, 16, {"epochs": 200})),
    ),
    ("kgcoop", "base2novel"): _KGCOOP_B2N,
    ("kgcoop", "cross_dataset"): replace(
        _KGCOOP_B2N, choice=_NONE_RELEASED.format(protocol="cross-dataset", method="KgCoOp")
    ),
    ("kgcoop", "few_shot"): replace(_KGCOOP_B2N, choice=_NONE_RELEASED.format(protocol="few-shot", method="KgCoOp")),
    ("ivlp", "base2novel"): _IVLP_B2N,
    ("ivlp", "cross_dataset"): replace(
        _IVLP_B2N, choice=_NONE_RELEASED.format(protocol="cross-dataset", method="IVLP (PromptSRC's config)")
    ),
    ("ivlp", "few_shot"): replace(
        _IVLP_B2N, choice=_NONE_RELEASED.format(protocol="few-shot", method="IVLP (PromptSRC's config)")
    ),
    # The point-wise L1 baseline is PromptSRC's consistency terms without its KL term and prompt ensembling:
    # it has no release of its own, so it takes PromptSRC's recipe for each protocol.
    **{
        ("pointwise_l1", protocol): _entry(
            {"lr": 0.0025, "batch_size": 4, "epochs": epochs},
            _PROMPTSRC + f"PromptSRC/vit_b16_c2_ep{epochs}_batch4_4+4ctx{config}.yaml",
            prompts={"text_depth": depth, "vision_depth": depth},
            regulariser=_PROMPTSRC_TERMS,
            choice="a baseline of this suite (PromptSRC's L1 terms alone): PromptSRC's recipe",
        )
        for protocol, epochs, config, depth in (
            ("base2novel", 20, "", 9),
            ("cross_dataset", 20, "_cross_datasets", 3),
            ("few_shot", 50, "_few_shot", 9),
        )
    },
    ("cocoop", "base2novel"): _COCOOP,
    ("cocoop", "cross_dataset"): replace(
        _COCOOP, source=_COCOOP.source + "; scripts/cocoop/xd_train.sh (ImageNet, all classes)"
    ),
    ("cocoop", "few_shot"): replace(_COCOOP, choice=_NONE_RELEASED.format(protocol="few-shot", method="CoCoOp")),
    ("maple", "base2novel"): _MAPLE_B2N,
    ("maple", "cross_dataset"): _entry(
        {"lr": 0.0026, "batch_size": 4, "epochs": 2},
        _MAPLE_REPO + "vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml",
        prompts={"text_depth": 3, "vision_depth": 3},
    ),
    ("maple", "few_shot"): replace(_MAPLE_B2N, choice=_NONE_RELEASED.format(protocol="few-shot", method="MaPLe")),
    ("promptsrc", "base2novel"): _PROMPTSRC_B2N,
    ("promptsrc", "cross_dataset"): _entry(
        {"lr": 0.0025, "batch_size": 4, "epochs": 20},
        _PROMPTSRC + "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml (GPA mean 6, std 10)",
        prompts={"text_depth": 3, "vision_depth": 3},
        regulariser=_PROMPTSRC_TERMS,
        aggregate={"mean": 6, "std": 10},
    ),
    ("promptsrc", "few_shot"): _entry(
        {"lr": 0.0025, "batch_size": 4, "epochs": 50},
        _PROMPTSRC + "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml and scripts/promptsrc/few_shot.sh (GPA "
        "mean 30, std 30 on ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397; mean 45, std 5 on the others)",
        prompts={"text_depth": 9, "vision_depth": 9},
        regulariser=_PROMPTSRC_TERMS,
        aggregate={"mean": 45, "std": 5},
        by_dataset={d: {"aggregate": {"mean": 30, "std": 30}} for d in _PROMPTSRC_FEW_SHOT_WIDE},
    ),
    # Prompt-OT and the ablations the paper reports with it share its config.
    **{
        (m, p): e
        for m in ("prompt_ot", "prompt_ot_vision", "prompt_ot_text", "prompt_ot_sinkhorn", "prompt_ot_unbalanced")
        for p, e in _PROMPT_OT.items()
    },
}

SHARED_SOURCE = (
    "Prompt-OT's base-to-novel recipe (ChongQingNoSubway/Prompt-OT) for every method, each with its own "
    "prompt layout, tested at the final epoch"
)


@dataclass(frozen=True)
class Recipe:
    """The resolved recipe of one (method, protocol, dataset, shots): every value a run uses, and its origin."""

    name: str  # "released" | "shared"
    method: str  # the registry method whose recipe this is (a variant's base method)
    protocol: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    warmup_lr: float
    precision: str
    eval_epoch: int  # 0 = the final epoch
    prompts: dict = field(default_factory=dict)
    regulariser: dict = field(default_factory=dict)
    frozen_template: str | None = None
    aggregate: dict | None = None
    source: str = ""
    choice: str = ""
    overridden: tuple = ()  # the keys params.yaml set on top of the table

    @property
    def tested_epoch(self) -> int:
        return self.eval_epoch or self.epochs

    @property
    def trains(self) -> bool:
        return self.epochs > 0

    def train_values(self) -> dict:
        return {key: getattr(self, key) for key in RECIPE_KEYS}

    def to_dict(self) -> dict:
        return asdict(self) | {"overridden": list(self.overridden), "tested_epoch": self.tested_epoch}


def check_recipe_name(name) -> str:
    if name not in RECIPE_NAMES:
        raise unknown_name("recipe", str(name), RECIPE_NAMES)
    return name


def _table_entry(name: str, method: str, protocol: str) -> Entry:
    if protocol not in TRAINED_PROTOCOLS:
        raise unknown_name("training protocol", protocol, TRAINED_PROTOCOLS)
    if name == "shared":
        return _ZEROSHOT if method == "zeroshot" else _entry(PROMPT_OT_B2N, SHARED_SOURCE)
    if (method, protocol) not in RELEASED:
        raise UserError(
            f"the released recipe has no entry for method {method!r} on {protocol}; add one to "
            "prompt_ot/recipes.py or use recipe: shared"
        )
    return RELEASED[(method, protocol)]


def resolve_recipe(
    name: str, method: str, protocol: str, dataset: str, shots: int, overrides: dict | None = None
) -> Recipe:
    """The recipe ``name`` of registry method ``method`` for one training protocol, dataset and shot count, with
    ``overrides`` (recipe keys from params.yaml) on top."""
    check_recipe_name(name)
    entry = _table_entry(name, method, protocol)
    train = dict(entry.train)
    for low, high, values in entry.by_shots:
        if low <= shots <= high:
            train.update(values)
    by_dataset = dict(entry.by_dataset.get(dataset, {}))
    aggregate = by_dataset.pop("aggregate", entry.aggregate)
    train.update(by_dataset)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RECIPE_KEYS))
    if unknown:
        raise UserError(f"unknown recipe key(s) {unknown}; known: {', '.join(RECIPE_KEYS)}")
    if not entry.trains:  # a method that trains nothing takes only the precision it is evaluated in
        overrides = {k: v for k, v in overrides.items() if k == "precision"}
    train.update(overrides)
    return Recipe(
        name=name,
        method=method,
        protocol=protocol,
        prompts=dict(entry.prompts),
        regulariser=dict(entry.regulariser),
        frozen_template=entry.frozen_template,
        aggregate=None if aggregate is None else dict(aggregate),
        source=entry.source,
        choice=entry.choice,
        overridden=tuple(sorted(overrides)),
        **train,
    )


def describe(name: str) -> str:
    """One sentence for table captions: which recipe the rows used."""
    return {
        "released": "each method trained with its authors' released recipe (lr, batch, epochs, depth, "
        "precision, tested epoch)",
        "shared": "every method trained with Prompt-OT's recipe (the same budget), tested at the final epoch",
    }[check_recipe_name(name)]
