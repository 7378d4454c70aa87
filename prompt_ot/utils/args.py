"""argparse ``type=`` functions shared by the stage commands: every value a user can type is checked while the
command line is parsed, before any work starts, and a bad one gets one line naming the option.

argparse calls these with the text given and reports an ``ArgumentTypeError`` as
``argument --shots: must be a positive integer, got '0'``; ``prompt_ot.cli`` turns that into one ``error:`` line
and exit status 2. They check only what the text itself can tell (numbers, names, whether a path is a file or a
folder and can be written); what a file holds is checked by the code that reads it, also before any work.
Nothing here imports torch: ``--help`` and a refused command stay fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import string
from pathlib import Path

ArgumentTypeError = argparse.ArgumentTypeError


# ------------------------------------------------------------------------------------------- numbers
def _number(text: str, parse, what: str, smallest, inclusive: bool = True):
    """``parse(text)`` if it is a number of at least (or, not ``inclusive``, above) ``smallest``, finite; else one
    ArgumentTypeError saying it must be ``what``."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    finite = value is not None and not (isinstance(value, float) and not math.isfinite(value))
    if not finite or value < smallest or (value == smallest and not inclusive):
        raise ArgumentTypeError(f"must be {what}, got {text!r}") from None
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1 (a count: shots, epochs, batch size, retries)."""
    return _number(text, int, "a positive integer", 1)


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a seed, a number of workers, epochs where 0 means none)."""
    return _number(text, int, "a non-negative integer", 0)


def finite_float(text: str) -> float:
    """A finite number: NaN and infinity are refused."""
    return _number(text, float, "a finite number", -math.inf)


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, a rate)."""
    return _number(text, float, "a finite positive number", 0.0, inclusive=False)


# ------------------------------------------------------------------------------------------- names
def non_empty(text: str) -> str:
    """Any text but the empty one (or only blanks)."""
    if not text.strip():
        raise ArgumentTypeError("must not be empty")
    return text


def dataset_name(text: str) -> str:
    """A dataset of the registry (its recipes are read, not imported with torch)."""
    from prompt_ot.data.registry import dataset_names

    known = dataset_names()
    if text not in known:
        raise ArgumentTypeError(f"unknown dataset {text!r}; known datasets: {', '.join(known)}")
    return text


def subset_name(text: str) -> str:
    """A class subset of a split: all, base or novel."""
    from prompt_ot.data.splits import SUBSETS

    if text not in SUBSETS:
        raise ArgumentTypeError(f"unknown subset {text!r}; known subsets: {', '.join(SUBSETS)}")
    return text


_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def device_name(text: str) -> str:
    """auto, cpu, mps, cuda or cuda:N (whether that device exists is :func:`check_device`'s job)."""
    if not _DEVICE.fullmatch(text):
        raise ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    return text


def check_device(device: str, option: str = "--device") -> None:
    """A UserError unless ``device`` (from :func:`device_name`) exists on this machine; imports torch."""
    from prompt_ot.errors import UserError

    if not device.startswith("cuda"):
        if device == "mps":
            import torch

            if not torch.backends.mps.is_available():
                raise UserError(f"{option} mps: no MPS device on this machine; use {option} cpu or auto")
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise UserError(f"{option} {device}: no CUDA device on this machine; use {option} cpu or auto")
    if index >= count:
        raise UserError(
            f"{option} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
            f"use one of them or {option} auto"
        )


def template(text: str) -> str:
    """A class-text template with exactly one ``{}`` where the class name goes."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        text.format("x")
    except (ValueError, IndexError, KeyError):
        fields = None
    if fields != [""]:
        raise ArgumentTypeError(
            f"template {text!r} must contain exactly one '{{}}' where the class name goes (and no other braces)"
        )
    return text


def require(option: str, values, kind) -> None:
    """Apply one of these checks later than parsing (when another option's error must be named first), with the
    same message, as a UserError."""
    from prompt_ot.errors import UserError

    for value in values if isinstance(values, (list, tuple)) else [values]:
        try:
            kind(value)
        except ArgumentTypeError as err:
            raise UserError(f"argument {option}: {err}") from None


# ------------------------------------------------------------------------------------------- paths
def existing_file(text: str) -> str:
    """A path to an existing regular file."""
    path = Path(text)
    if not text:
        raise ArgumentTypeError("must name a file, got ''")
    if path.is_dir():
        raise ArgumentTypeError(f"{text} is a folder; give a file")
    if not path.is_file():
        raise ArgumentTypeError(f"file {text} does not exist")
    return text


def existing_dir(text: str) -> str:
    """A path to an existing folder."""
    path = Path(text)
    if not text:
        raise ArgumentTypeError("must name a folder, got ''")
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text} is a file, not a folder")
    if not path.is_dir():
        raise ArgumentTypeError(f"folder {text} does not exist")
    return text


def _writable_below(path: Path, text: str) -> None:
    """Refuse ``path`` unless the nearest folder above it that exists can be written into."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ArgumentTypeError(f"cannot write {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"cannot write {text}: folder {parent} is not writable")


def dir_path(text: str) -> str:
    """A folder that may not exist yet (e.g. a data root): refused only when it is a file or cannot be made."""
    if not text:
        raise ArgumentTypeError("must name a folder, got ''")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text} is a file, not a folder")
    if not path.exists():
        _writable_below(path, text)
    return text


def out_dir(text: str) -> str:
    """An output folder: existing (and writable) or creatable; never an existing file."""
    text = dir_path(text)
    path = Path(text)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"cannot write into folder {text}: it is not writable")
    return text


def out_file(text: str) -> str:
    """An output file: not a folder, in a folder that exists and is writable or can be created."""
    if not text:
        raise ArgumentTypeError("must name a file, got ''")
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise ArgumentTypeError(f"{text} is a folder; give the path of the file to write")
    _writable_below(path, text)  # outputs are written beside their final name, then renamed over it
    return text


def backbone_key_option(parser) -> None:
    """``--backbone-key``: which backbone of a list in params.yaml a stage command works with."""
    parser.add_argument(
        "--backbone-key",
        default=None,
        metavar="KEY",
        help="when params.yaml lists several backbones: the key of the one to use (its `key`, or its name and "
        "pretrained tag in lower case with underscores)",
    )
