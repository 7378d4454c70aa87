"""Fashion-MNIST-Sketch (offline demo, domain generalisation target): the test images drawn as sketches.

Like ImageNet-Sketch for ImageNet: 200 test images per class (2,000 in all, a fixed-seed sample shared with
Fashion-MNIST-R), each drawn as its edge map: dark lines (0) where the Sobel gradient magnitude is at least 0.2 of
the image's largest, white (255) elsewhere, grey stored as RGB (``prompt_ot.data.shifts.sketch``). Built from the
Fashion-MNIST source files. Test split only.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist
from prompt_ot.data.demo import prepare_demo
from prompt_ot.data.registry import DatasetSpec

SPLIT_FILE = "split_zhou_FashionMNISTSketch.json"


def prepare(folder: Path) -> None:
    """Build the set into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, lambda: shifts.sketch_arrays(fashion_mnist.load_arrays(Path(folder))))


DATASET = DatasetSpec(
    name="fashion_mnist_sketch",
    folder="fashion_mnist_sketch",
    template=fashion_mnist.DATASET.template,
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="target_only",
    notes="offline demo DG target: 2,000 Fashion-MNIST test images as Sobel edge sketches, 28x28 grey as RGB",
    extra={"num_classes": 10, "split_sizes": (0, 0, 2000)},
)
