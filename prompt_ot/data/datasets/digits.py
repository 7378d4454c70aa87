"""Digits (offline demo): scikit-learn's 1,797 handwritten 8x8 digits, 10 classes, bundled with sklearn.

Pixel values 0..16 are scaled to 0..255 (v * 255 / 16, rounded). Split, per class in source order:
positions 0, 1, 2 of every 5 are training, 3 validation, 4 test (a deterministic 60/20/20 stratified split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prompt_ot.data.demo import DemoArrays, prepare_demo
from prompt_ot.data.registry import DatasetSpec

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_FILE = "split_zhou_Digits.json"
PART_OF_POSITION = ("train", "train", "train", "val", "test")  # position within class, modulo 5


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """sklearn's 0..16 intensities as 0..255 bytes, rounded half up."""
    return ((pixels.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)


def load_arrays() -> DemoArrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    position = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        position[members] = np.arange(len(members))
    part_of = np.array(PART_OF_POSITION)[position % len(PART_OF_POSITION)]
    return DemoArrays(
        images=to_uint8(digits.images),
        labels=labels,
        names=[f"digit_{i:04d}" for i in range(len(labels))],
        classnames=CLASSNAMES,
        parts={part: np.flatnonzero(part_of == part) for part in ("train", "val", "test")},
    )


def prepare(folder: Path) -> None:
    """Convert the digits into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, load_arrays)


DATASET = DatasetSpec(
    name="digits",
    folder="digits",
    template="a photo of the digit {}.",
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="demo",
    notes="offline demo dataset; scikit-learn's load_digits, 8x8 grey stored as RGB PNG, 60/20/20 split",
)
