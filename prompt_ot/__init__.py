"""prompt-ot: a reproducible benchmark suite for prompt learning on CLIP, built around Prompt-OT.

The library (models, losses, methods, training, evaluation, data) knows nothing of Snakemake, DVC or
MLflow; the stage commands in :mod:`prompt_ot.cli` and the tracking layer sit on top of it.
Heavy dependencies (torch, open_clip, POT) are imported lazily by the submodules that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``prompt_ot.load_run`` (see :mod:`prompt_ot.predict`), imported on first use so that ``import prompt_ot`` stays
    light."""
    if name == "load_run":
        from prompt_ot.predict import load_run

        return load_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
