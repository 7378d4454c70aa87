"""Fashion-MNIST-R (offline demo, domain generalisation target): the test images re-drawn as flat-colour posters.

Like ImageNet-R (renditions) for ImageNet: the 2,000 test images of Fashion-MNIST-Sketch, each re-drawn as a
poster: pixels below grey 8 are background, the others are quantised to 3 equal-width grey levels, and background
and levels take a palette of 4 colours drawn per image with a fixed seed, the levels' colours ordered dark to light
(``prompt_ot.data.shifts.poster``). Built from the Fashion-MNIST source files. Test split only, RGB.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist
from prompt_ot.data.demo import prepare_demo
from prompt_ot.data.registry import DatasetSpec

SPLIT_FILE = "split_zhou_FashionMNISTR.json"


def prepare(folder: Path) -> None:
    """Build the set into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, lambda: shifts.rendition_arrays(fashion_mnist.load_arrays(Path(folder))))


DATASET = DatasetSpec(
    name="fashion_mnist_r",
    folder="fashion_mnist_r",
    template=fashion_mnist.DATASET.template,
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="target_only",
    notes="offline demo DG target: 2,000 Fashion-MNIST test images as 3-level colour posters, 28x28 RGB",
    extra={"num_classes": 10, "split_sizes": (0, 0, 2000)},
)
