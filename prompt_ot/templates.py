"""Named sets of text templates for ensembled frozen class texts.

``imagenet_60`` is PromptSRC's frozen text target (``IMAGENET_TEMPLATES`` of its ``trainers/imagenet_templates.py``,
muzairkhattak/PromptSRC): "a photo of a {}." first, then CLIP's 80 ImageNet templates (open_clip's
``OPENAI_IMAGENET_TEMPLATES``, in their order) among the first 60 except that one; a test holds the set against a
restatement of that rule. A method's ``frozen_template`` names a set with the ``templates:`` prefix.
"""

from __future__ import annotations

from functools import cache

SET_PREFIX = "templates:"
FIRST = "a photo of a {}."


@cache
def _openai_imagenet() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def _imagenet_60() -> list[str]:
    clip80 = _openai_imagenet()
    return [FIRST] + [t for t in clip80[:60] if t != FIRST]


TEMPLATE_SETS = {"imagenet_60": _imagenet_60}


def is_template_set(template) -> bool:
    return isinstance(template, str) and template.startswith(SET_PREFIX)


def template_set(template: str) -> list[str]:
    """The templates of ``templates:<name>``."""
    from prompt_ot.errors import unknown_name

    name = template[len(SET_PREFIX) :]
    if name not in TEMPLATE_SETS:
        raise unknown_name("template set", name, TEMPLATE_SETS)
    return TEMPLATE_SETS[name]()


def as_templates(value) -> tuple[str, ...]:
    """One template or a list of them (params.yaml takes both), as a tuple; nothing gives ()."""
    return (value,) if isinstance(value, str) else tuple(value or ())


def check_templates(templates, where: str = "") -> None:
    """Each template has exactly one ``{}`` where the class name goes; ``where`` prefixes the message."""
    from prompt_ot.errors import UserError

    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}template {template!r} must contain exactly one '{{}}' where the class name goes")
