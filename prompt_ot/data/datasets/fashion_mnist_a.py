"""Fashion-MNIST-A (offline demo, domain generalisation target): test images another model gets wrong.

Like ImageNet-A for ImageNet (images a chosen model misclassifies): the Fashion-MNIST test images that a
nearest-class-mean classifier on raw pixels (scaled to [0, 1]), fitted on Fashion-MNIST's train part, gets wrong;
when there are more than 2,000, a fixed-seed class-stratified sample of 2,000 of them
(``prompt_ot.data.shifts.adversarial_arrays``). On the real data the classifier gets 3,223 of the 10,000 wrong, so
the set is that sample of 2,000. Built from the Fashion-MNIST source files. Test split only.
"""

from __future__ import annotations

from pathlib import Path

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist
from prompt_ot.data.demo import prepare_demo
from prompt_ot.data.registry import DatasetSpec

SPLIT_FILE = "split_zhou_FashionMNISTA.json"


def prepare(folder: Path) -> None:
    """Build the set into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, lambda: shifts.adversarial_arrays(fashion_mnist.load_arrays(Path(folder))))


DATASET = DatasetSpec(
    name="fashion_mnist_a",
    folder="fashion_mnist_a",
    template=fashion_mnist.DATASET.template,
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="target_only",
    notes="offline demo DG target: 2,000 of the 3,223 Fashion-MNIST test images a nearest-class-mean classifier misses",
    extra={"num_classes": 10, "split_sizes": (0, 0, 2000)},
)
