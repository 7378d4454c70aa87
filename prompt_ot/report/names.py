"""Display names of methods and datasets (the one mapping every table and plot uses) and LaTeX escaping.

Names are plain text here; ``latex=True`` returns them escaped for LaTeX. Unknown names fall back to the
registry name itself, so a new method or a demo dataset still gets a (escaped) label.
"""

from __future__ import annotations

import re

# registry name -> display name, in the order rows appear in tables
METHOD_NAMES: dict[str, str] = {
    "zeroshot": "CLIP (zero-shot)",
    "coop": "CoOp",
    "cocoop": "CoCoOp",
    "kgcoop": "KgCoOp",
    "ivlp": "IVLP",
    "maple": "MaPLe",
    "pointwise_l1": "Point-wise L1",
    "promptsrc": "PromptSRC",
    "prompt_ot_vision": "Prompt-OT, vision only",
    "prompt_ot_text": "Prompt-OT, text only",
    "prompt_ot_sinkhorn": "Prompt-OT, Sinkhorn",
    "prompt_ot_unbalanced": "Prompt-OT, unbalanced",
    "prompt_ot": "Prompt-OT (ours)",
    "prompt_ot_identity_plan": "Prompt-OT, identity plan",  # the transport-plan controls (prompt_ot.losses.ot.PLANS)
    "prompt_ot_uniform_plan": "Prompt-OT, uniform plan",
}

# protocol -> display name
PROTOCOL_NAMES: dict[str, str] = {
    "base2novel": "Base-to-novel",
    "cross_dataset": "Cross-dataset",
    "domain_generalization": "Domain generalisation",
    "few_shot": "Few-shot",
}

# registry name -> display name, in the CoOp benchmark's column order
DATASET_NAMES: dict[str, str] = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "flowers102": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenet_v2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
    "digits": "Digits",
    "fashion_mnist": "Fashion-MNIST",
    "fashion_mnist_v2": "Fashion-MNIST-V2",
    "fashion_mnist_sketch": "Fashion-MNIST-Sketch",
    "fashion_mnist_a": "Fashion-MNIST-A",
    "fashion_mnist_r": "Fashion-MNIST-R",
    "clipart": "Clip art",
    "digits_sketch": "Digits-Sketch",
}

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(ch) for ch in _LATEX_SPECIALS))


def latex_escape(text: str) -> str:
    """Escape the ten LaTeX special characters so ``text`` prints literally."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIALS[m.group()], str(text))


def dataset_name(dataset: str, latex: bool = False) -> str:
    name = DATASET_NAMES.get(dataset, dataset)
    return latex_escape(name) if latex else name


def method_name(
    method: str,
    base_method: str | None = None,
    weight: float | None = None,
    latex: bool = False,
    adaptive: bool = False,
) -> str:
    """Display name of a method; a variant (``method != base_method``) is its base's name plus its lambda, or
    plus "adaptive λ" when its lambda adapted while training (``adaptive``); a variant with a name of its own here
    (the transport-plan controls) keeps that name."""
    if method in METHOD_NAMES:
        return latex_escape(METHOD_NAMES[method]) if latex else METHOD_NAMES[method]
    if base_method and base_method != method and adaptive:
        base = method_name(base_method, latex=latex)
        return f"{base}, adaptive $\\lambda$" if latex else f"{base}, adaptive λ"
    if base_method and base_method != method and weight is not None:
        base = method_name(base_method, latex=latex)
        return f"{base}, $\\lambda={weight:g}$" if latex else f"{base}, λ={weight:g}"
    name = METHOD_NAMES.get(method, method)
    return latex_escape(name) if latex else name


def _order(known: dict[str, str], name: str) -> tuple[int, str]:
    keys = list(known)
    return (keys.index(name), "") if name in keys else (len(keys), name)


def dataset_order(dataset: str) -> tuple[int, str]:
    """Sort key: the benchmark's order first, unknown datasets after, alphabetically."""
    return _order(DATASET_NAMES, dataset)


def method_order(method: str, base_method: str | None = None, weight: float | None = None) -> tuple:
    """Sort key: registry order; a variant right after its base method, by lambda."""
    anchor = base_method or method
    rank = _order(METHOD_NAMES, anchor)
    is_variant = base_method is not None and base_method != method
    return rank + (int(is_variant), weight if weight is not None else float("inf"), method)
