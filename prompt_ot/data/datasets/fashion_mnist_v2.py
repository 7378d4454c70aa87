"""Fashion-MNIST-V2 (offline demo, domain generalisation target): a fresh sample of the same distribution.

Like ImageNet-V2 for ImageNet: 200 images per class (2,000 in all) drawn with a fixed seed from Fashion-MNIST's
val part, which the demo neither trains nor tests on; images and labels unchanged
(``prompt_ot.data.shifts.v2_arrays``). Built from the Fashion-MNIST source files. Test split only.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist
from prompt_ot.data.demo import prepare_demo
from prompt_ot.data.registry import DatasetSpec

SPLIT_FILE = "split_zhou_FashionMNISTV2.json"


def prepare(folder: Path) -> None:
    """Build the set into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, lambda: shifts.v2_arrays(fashion_mnist.load_arrays(Path(folder))))


DATASET = DatasetSpec(
    name="fashion_mnist_v2",
    folder="fashion_mnist_v2",
    template=fashion_mnist.DATASET.template,
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="target_only",
    notes="offline demo DG target: 2,000 held-out val images of Fashion-MNIST (200 per class), 28x28 grey as RGB",
    extra={"num_classes": 10, "split_sizes": (0, 0, 2000)},
)
