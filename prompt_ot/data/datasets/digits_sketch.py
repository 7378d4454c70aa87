"""Digits-Sketch (offline demo, domain generalisation target): every digits test image drawn as a sketch.

The digits' counterpart of Fashion-MNIST-Sketch, small enough for the test suite's grid (whose cross-dataset source
is the digits): each of the 355 test images drawn as its edge map by ``prompt_ot.data.shifts.sketch`` (dark lines
where the Sobel gradient magnitude is at least 0.2 of the image's largest, white elsewhere). Test split only.
"""

from __future__ import annotations

import numpy as np

from prompt_ot.data import shifts
from prompt_ot.data.datasets import digits
from prompt_ot.data.demo import DemoArrays


def sketch_arrays(source: DemoArrays) -> DemoArrays:
    """The source's test part, every image drawn by ``shifts.sketch``; nothing else."""
    test = source.parts["test"]
    return shifts.as_test_set(source, test, np.stack([shifts.sketch(source.images[i]) for i in test]))


DATASET = shifts.shifted_dataset(
    name="digits_sketch",
    source=digits.DATASET,
    load=lambda _folder: digits.load_arrays(),
    shift=sketch_arrays,
    split_file="split_zhou_DigitsSketch.json",
    test_images=355,
    notes="offline demo DG target: the 355 digits test images as Sobel edge sketches, 8x8 grey as RGB",
)
