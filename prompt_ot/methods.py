"""The methods of the benchmark, each a prompt layout plus an optional regulariser, with the paper's defaults.

A method is data: ``get_method("prompt_ot", overrides)`` returns a frozen ``MethodConfig``; the trainer and
the model builder read it. The layouts here are those of the ``shared`` recipe (Prompt-OT's depth 12 for the
deep prompts); ``prompt_ot.recipes`` holds each method's released layout and training values, and
``prompt_ot.config.resolve_run`` combines the two. Depths are capped at the backbone's number of layers.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace

from prompt_ot.errors import UserError, unknown_name
from prompt_ot.models.prompted import PromptConfig
from prompt_ot.recipes import DATASET_TEMPLATE
from prompt_ot.templates import SET_PREFIX as TEMPLATE_SET_PREFIX
from prompt_ot.templates import is_template_set, template_set

DEEP = PromptConfig(text_ctx=4, text_depth=12, vision_ctx=4, vision_depth=12, ctx_init="a photo of a")
SHALLOW_TEXT = PromptConfig(text_ctx=4, text_depth=1, vision_ctx=0, vision_depth=0, ctx_init="a photo of a")
NONE = PromptConfig(text_ctx=0, text_depth=0, vision_ctx=0, vision_depth=0, ctx_init=None)
# CoCoOp: CoOp's context shifted per image by a meta-net of hidden width (image feature width) / 16
CONDITIONAL = PromptConfig(text_ctx=4, text_depth=1, vision_ctx=0, vision_depth=0, ctx_init="a photo of a", meta_net=16)
# MaPLe: 2 text tokens from "a photo" ("of a" stays as fixed words), each depth's vision tokens mapped from them
COUPLED = PromptConfig(
    text_ctx=2, text_depth=12, vision_ctx=2, vision_depth=12, ctx_init="a photo", fixed_words="of a", coupled=True
)
# PromptSRC's Gaussian prompt aggregation under the shared recipe: its base-to-novel mean 15 and std 1 of 20
# epochs, as fractions of the run's epochs (the released recipe gives absolute values)
SHARED_GPA = {"mean": 0.75, "std": 0.05, "relative": True}


def _ot(modality: str, solver: str = "exact", **extra) -> dict:
    return {"kind": "ot", "modality": modality, "solver": solver, "weight": 10.0, "eta": 0.5, **extra}


@dataclass(frozen=True)
class MethodConfig:
    name: str
    description: str
    prompts: PromptConfig
    regulariser: dict | None = None
    trains: bool = True
    # S_c, the pre-trained text targets of the regulariser: a template with one {}, or "dataset" for the
    # dataset's own zero-shot template (KgCoOp's)
    frozen_template: str = "a photo of a {}."
    extra: dict = field(default_factory=dict)
    # Gaussian prompt aggregation over epochs (PromptSRC): {"mean", "std"} in epochs, or fractions of the run's
    # epochs with "relative": true; None: the trained prompts are the last epoch's
    aggregate: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def frozen_template_for(self, dataset_template: str) -> str:
        """The template of the frozen class texts S_c for a dataset whose zero-shot template is given."""
        return dataset_template if self.frozen_template == DATASET_TEMPLATE else self.frozen_template

    def gpa_weights(self, epochs: int) -> list[float] | None:
        """The aggregation weight of each epoch 1..epochs (normalised to sum 1), or None without aggregation."""
        if self.aggregate is None:
            return None
        return gpa_weights(epochs, **self.aggregate)


def gpa_weights(epochs: int, mean: float, std: float, relative: bool = False) -> list[float]:
    """PromptSRC's Gaussian prompt aggregation: epoch e = 1 ... epochs gets the normal density N(e; mean, std),
    normalised to sum 1 (``relative``: mean and std are fractions of ``epochs``)."""
    import math

    if relative:
        mean, std = mean * epochs, std * epochs
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(density)
    if not total > 0:
        raise UserError(
            f"Gaussian prompt aggregation with mean {mean} and std {std} gives every one of the {epochs} "
            "epochs a zero weight; put the mean within the run's epochs or widen the std"
        )
    return [d / total for d in density]


def check_aggregate(spec) -> dict | None:
    """A valid aggregation spec ({"mean", "std"[, "relative"]}), or a UserError naming what is wrong."""
    import math

    if spec is None:
        return None
    if not isinstance(spec, dict) or not {"mean", "std"} <= set(spec) or set(spec) - {"mean", "std", "relative"}:
        raise UserError(
            f"aggregate {spec!r} must be a mapping with 'mean' and 'std' (epochs) and optionally "
            "'relative' (true: fractions of the run's epochs), or null for none"
        )
    for key in ("mean", "std"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"aggregate.{key} must be a finite number, got {value!r}")
    if not spec["std"] > 0:
        raise UserError(f"aggregate.std must be > 0, got {spec['std']!r}")
    if not isinstance(spec.get("relative", False), bool):
        raise UserError(f"aggregate.relative must be true or false, got {spec['relative']!r}")
    return dict(spec)


METHODS: dict[str, MethodConfig] = {
    m.name: m
    for m in [
        MethodConfig("zeroshot", "zero-shot CLIP with the dataset's hand-crafted template", NONE, None, trains=False),
        MethodConfig("coop", "CoOp: 4 learnable text context tokens at the input only", SHALLOW_TEXT),
        MethodConfig(
            "cocoop", "CoCoOp: CoOp's context shifted per image by a meta-net (512-32-512 on ViT-B/16)", CONDITIONAL
        ),
        MethodConfig("ivlp", "independent deep vision-language prompts, no regulariser", DEEP),
        MethodConfig(
            "maple", "MaPLe: 2 text prompts per depth, each depth's vision prompts a linear map of them", COUPLED
        ),
        MethodConfig(
            "promptsrc",
            "PromptSRC: IVLP plus L1 to the frozen features (image 10, text 25: the 60-template "
            "ensemble), the zero-shot logits' KL and Gaussian prompt aggregation",
            DEEP,
            {"kind": "promptsrc", "image_weight": 10.0, "text_weight": 25.0, "logit_weight": 1.0},
            frozen_template=TEMPLATE_SET_PREFIX + "imagenet_60",
            aggregate=SHARED_GPA,
        ),
        MethodConfig(
            "kgcoop",
            "KgCoOp: CoOp plus a pull of prompted class texts to the dataset's hand-crafted ones (weight 8)",
            SHALLOW_TEXT,
            {"kind": "kgcoop", "weight": 8.0},
            frozen_template=DATASET_TEMPLATE,
        ),
        MethodConfig(
            "pointwise_l1",
            "IVLP plus L1 between each fine-tuned feature and its frozen one (image 10, text 25)",
            DEEP,
            {"kind": "pointwise_l1", "image_weight": 10.0, "text_weight": 25.0},
        ),
        MethodConfig(
            "prompt_ot",
            "Prompt-OT: IVLP plus exact OT between joint image+text features (lambda 10)",
            DEEP,
            _ot("joint"),
        ),
        MethodConfig("prompt_ot_vision", "Prompt-OT ablation: OT on image features only", DEEP, _ot("vision")),
        MethodConfig("prompt_ot_text", "Prompt-OT ablation: OT on text features only", DEEP, _ot("text")),
        MethodConfig(
            "prompt_ot_sinkhorn", "Prompt-OT with an entropic (Sinkhorn) plan", DEEP, _ot("joint", "sinkhorn")
        ),
        MethodConfig(
            "prompt_ot_unbalanced", "Prompt-OT with an unbalanced entropic plan", DEEP, _ot("joint", "unbalanced")
        ),
    ]
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str, overrides: dict | None = None) -> MethodConfig:
    """The named method with optional overrides: {"prompts": {...}, "regulariser": {...}, "frozen_template": ...,
    "aggregate": {...}}."""
    if name not in METHODS:
        raise unknown_name("method", name, METHODS)
    return apply_overrides(METHODS[name], overrides)


def check_template(template) -> str:
    if is_template_set(template):
        template_set(template)  # an unknown set is named here
        return template
    if template != DATASET_TEMPLATE and (not isinstance(template, str) or template.count("{}") != 1):
        raise UserError(
            f"frozen_template {template!r} must hold exactly one '{{}}' for the class name, be "
            f"{DATASET_TEMPLATE!r} for the dataset's own template, or name a template set "
            f"('{TEMPLATE_SET_PREFIX}imagenet_60')"
        )
    return template


def apply_overrides(method: MethodConfig, overrides: dict | None) -> MethodConfig:
    """``method`` with {"prompts": {...}, "regulariser": {...}, "frozen_template": ...} applied on top."""
    if not overrides:
        return method
    name = method.name
    overrides = copy.deepcopy(overrides)
    allowed = {"prompts", "regulariser", "frozen_template", "aggregate"}
    for key in overrides:
        if key not in allowed:
            raise UserError(f"method override {key!r} is not allowed; use one of {sorted(allowed)}")
    prompts = method.prompts
    if "prompts" in overrides:
        fields = set(asdict(prompts))
        bad = set(overrides["prompts"]) - fields
        if bad:
            raise UserError(f"unknown prompt setting(s) {sorted(bad)} for method {name}; known: {sorted(fields)}")
        prompts = replace(prompts, **overrides["prompts"])
    regulariser = method.regulariser
    if "regulariser" in overrides:
        extra = overrides["regulariser"]
        if extra is None:
            regulariser = None
        elif not isinstance(extra, dict):
            raise UserError(f"the regulariser override of {name} must be a mapping or null, got {extra!r}")
        elif "kind" in extra and (regulariser is None or extra["kind"] != regulariser.get("kind")):
            regulariser = extra  # another kind (or one added to a method without): its own arguments only
        elif regulariser is None:
            raise UserError(
                f"method {name} has no regulariser to override; give the regulariser a 'kind' "
                f"to add one, or pick a method that has one"
            )
        else:
            regulariser = {**regulariser, **extra}
    return replace(
        method,
        prompts=prompts,
        regulariser=regulariser,
        frozen_template=check_template(overrides.get("frozen_template", method.frozen_template)),
        aggregate=check_aggregate(overrides.get("aggregate", method.aggregate)),
    )


def build_model(method: MethodConfig, clip, tokenizer, seed: int = 1):
    """The prompted model for a method; prompt initialisation is seeded so a run is reproducible."""
    import torch

    from prompt_ot.models.prompted import PromptedCLIP, vision_transformer_layers

    text_layers = len(clip.transformer.resblocks)
    vision_layers = vision_transformer_layers(clip.visual)
    if method.prompts.coupled:  # one coupling per depth: both towers get the same number of prompted layers
        text_layers = vision_layers = min(text_layers, vision_layers)
    prompts = replace(
        method.prompts,
        text_depth=min(method.prompts.text_depth, text_layers),
        vision_depth=min(method.prompts.vision_depth, vision_layers),
    )
    devices = [clip.token_embedding.weight.device] if clip.token_embedding.weight.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return PromptedCLIP(clip, tokenizer, prompts)
