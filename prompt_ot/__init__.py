"""prompt-ot: a reproducible benchmark suite for prompt learning on CLIP, built around Prompt-OT.

The library (models, losses, methods, training, evaluation, data) knows nothing of Snakemake, DVC or
MLflow; the stage commands in :mod:`prompt_ot.cli` and the tracking layer sit on top of it.
Heavy dependencies (torch, open_clip, POT) are imported lazily by the submodules that need them.
"""

__version__ = "0.1.0"
