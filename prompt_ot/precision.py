"""The three numeric precisions of a run, in one place: how the backbone is built and what runs under autocast.

- ``fp32``: everything in float32.
- ``bf16``: float32 weights, the forward under bfloat16 autocast (the fast GPU path; not in the released code).
- ``fp16``: the released code's ``PREC: fp16``. CLIP's weights are cast to half as OpenAI's ``clip.load`` does
  (open_clip's ``precision="fp16"``: linear, convolution, attention and projection weights in half; embeddings,
  layer norms and the logit scale stay float32, layer norms computing in float32), prompts are created in
  half, and SGD steps the half prompts directly without loss scaling. No autocast.
"""

from __future__ import annotations

import contextlib

from prompt_ot.errors import unknown_name

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise unknown_name("precision", str(precision), PRECISIONS)
    return precision


def weights_precision(precision: str) -> str:
    """The ``precision`` argument of ``open_clip.create_model`` for a run of this precision."""
    return "fp16" if check_precision(precision) == "fp16" else "fp32"


def autocast(device, precision: str):
    """The context a forward of this precision runs in: bfloat16 autocast for ``bf16``, nothing otherwise."""
    import torch

    if check_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
