"""Load an open_clip backbone by name plus a pretrained tag or a local checkpoint file.

The paper's backbone is ``ViT-B-16-quickgelu`` with tag ``openai``. Tiny architectures for tests and the
offline demo ship as open_clip JSON configs in ``prompt_ot/models/configs/`` and are registered by name.
Weights that are not cached and cannot be fetched fail at once with a message saying how to provide them,
instead of a minute of network retries.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

from prompt_ot.errors import UserError, unknown_name

CONFIG_DIR = Path(__file__).parent / "configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HUB_HOST = ("huggingface.co", 443)
RANDOM_INIT_SEED = 0
_registered = False


@dataclass(frozen=True)
class Preprocess:
    """What the backbone expects of an input image."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def register_shipped_configs() -> None:
    """Make the package's tiny architectures known to open_clip by their file names."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _how_to_provide(name: str, tag: str, cache_dir: str | None) -> str:
    return (
        f"pretrained weights {name!r}/{tag!r} are not in the local cache and cannot be fetched "
        f"(offline{' : HF_HUB_OFFLINE is set' if _offline_env() else ''}). Either pass a local checkpoint file "
        f"(--pretrained /path/to/{name}.safetensors or a .pt/.bin state dict), or download it once on a machine "
        f"with internet into the Hugging Face cache (python -c \"import open_clip; open_clip.create_model('{name}', "
        f"pretrained='{tag}')\") and copy the cache directory here "
        f"({cache_dir or 'HF_HOME, default ~/.cache/huggingface'})."
    )


def resolve_weights(name: str, pretrained: str | None, cache_dir: str | None = None) -> str | None:
    """Turn a tag or a path into a local checkpoint file; None means random initialisation."""
    if pretrained in (None, "", "none", "random"):
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
        raise UserError(f"checkpoint file {pretrained} does not exist; give an existing file or an open_clip tag")
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        raise unknown_name(
            f"pretrained tag for {name}", pretrained, open_clip.list_pretrained_tags_by_model(name) or ["none"]
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in (str(Path(filename).with_suffix(".safetensors")), filename):
            cached = try_to_load_from_cache(model_id, candidate, cache_dir=cache_dir)
            if isinstance(cached, str):
                return cached
    if _offline_env() or not _hub_reachable():
        raise UserError(_how_to_provide(name, pretrained, cache_dir))
    return open_clip.download_pretrained(cfg, cache_dir=cache_dir)


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns on the root logger that no weights were loaded; for a random backbone that is the intent."""

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _no_random_init():
    """While a checkpoint is about to overwrite every weight: torch.nn.init's functions leave their tensor as it is.

    open_clip's ``create_model`` initialises every weight at random (the token embedding alone is 6 M normal draws)
    before it loads the checkpoint, which it loads strictly, every parameter and persistent buffer; the draws are
    made under a forked generator (below), so skipping them changes no weight and no later random number, and saves
    about 50 ms of each job on the demo's backbone."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def keep(tensor, *args, **kwargs):
        return tensor

    for n in names:
        setattr(init, n, keep)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


@functools.lru_cache(maxsize=1)
def _bpe_tables():
    """One default SimpleTokenizer: its tables (the 49,152-entry BPE vocabulary and merge ranks, about 70 ms to
    build from the file) are what every tokenizer built on the default vocabulary holds. The fork server builds it
    once (``warm``), so its jobs share it."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _simple_tokenizer(context_length=None, clean: str = "lower", reduction_mask: str = "", **other):
    """What ``open_clip.tokenizer.SimpleTokenizer(...)`` builds, for the default vocabulary a copy of
    :func:`_bpe_tables`' tokenizer with the per-call settings set as its ``__init__`` sets them
    (tests/test_models.py compares every attribute); anything else (another vocabulary, special tokens) is
    built by open_clip."""
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer, get_clean_fn, get_reduction_mask_fn

    context_length = DEFAULT_CONTEXT_LENGTH if context_length is None else context_length
    if other:
        return SimpleTokenizer(context_length=context_length, clean=clean, reduction_mask=reduction_mask, **other)
    tokenizer = copy.copy(_bpe_tables())
    tokenizer.cache = dict(tokenizer.cache)  # its memo of encoded words: each tokenizer its own
    tokenizer.context_length = context_length
    tokenizer.clean_fn = get_clean_fn(clean)
    tokenizer.reduction_fn = get_reduction_mask_fn(reduction_mask) if reduction_mask else None
    return tokenizer


def get_tokenizer(name: str):
    """``open_clip.get_tokenizer(name)``, whose SimpleTokenizers (the CLIP models' tokenizer) come from
    :func:`_simple_tokenizer` instead of being built from the vocabulary file each time."""
    import open_clip
    from open_clip import factory

    real = factory.SimpleTokenizer
    factory.SimpleTokenizer = _simple_tokenizer
    try:
        return open_clip.get_tokenizer(name)
    finally:
        factory.SimpleTokenizer = real


def warm() -> None:
    """What the fork server builds once for all its jobs (no tensors, no threads)."""
    _bpe_tables()


def load_backbone(
    name: str, pretrained: str | None = None, cache_dir: str | None = None, device: str = "cpu", precision: str = "fp32"
):
    """Build an open_clip CLIP in eval mode with every parameter frozen.

    ``precision`` "fp16" casts the weights to half as the released code's ``PREC: fp16`` does
    (:mod:`prompt_ot.precision`); "fp32" and "bf16" keep float32 weights. Returns ``(model, tokenizer, preprocess)``.
    """
    import open_clip

    from prompt_ot.precision import weights_precision

    register_shipped_configs()
    if name not in open_clip.list_models():
        raise unknown_name("backbone", name, open_clip.list_models())
    weights = resolve_weights(name, pretrained, cache_dir)
    import torch

    try:
        # random weights are seeded, so every stage that builds the same untrained backbone gets the same one
        skip_init = _no_random_init() if weights is not None else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(), skip_init:
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(
                name, pretrained=weights, device=device, cache_dir=cache_dir, precision=weights_precision(precision)
            )
    except (RuntimeError, KeyError, ValueError) as err:
        if weights is None:
            raise
        raise UserError(f"could not load checkpoint {weights} into {name}: {err}") from err
    except (pickle.UnpicklingError, EOFError) as err:  # weights_only loading refused code, or the file is cut
        raise UserError(
            f"checkpoint {weights} cannot be loaded safely or is not a weights file ({err.__class__.__name__}); give "
            "a .safetensors file or a state dict saved with torch.save(model.state_dict())"
        ) from err
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = get_tokenizer(name)
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    preprocess = Preprocess(
        image_size=size if isinstance(size, int) else int(size[0]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    return model, tokenizer, preprocess
