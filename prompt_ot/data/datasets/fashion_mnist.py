"""Fashion-MNIST (offline demo): 70,000 grey 28x28 images of 10 kinds of clothing, MIT licence.

Read from Debian's ``dataset-fashion-mnist`` package when installed, else downloaded by torchvision
(which verifies its checksums). Split: the test split is 2,000 of the official 10,000 test images, 200 per class
drawn with a fixed seed (the same images that the shifted sets Sketch and R redraw,
``prompt_ot.data.shifts.redraw_sample``), so that each evaluation costs a fifth of the full set's; the last 10%
of each class of the official training set (in file order) is the validation split, the rest is training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from prompt_ot.data.demo import DemoArrays, holdout_last, prepare_demo, read_idx
from prompt_ot.data.registry import DatasetSpec
from prompt_ot.data.shifts import redraw_sample
from prompt_ot.errors import UserError

CLASSNAMES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package installs the files
SPLIT_FILE = "split_zhou_FashionMNIST.json"
VAL_FRACTION = 0.1


def debian_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files of the Debian package in ``directory``, or None when any is missing."""
    files = {
        f"{part}_{kind}": directory / f"{part}-{kind}-ubyte.gz"
        for part in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    }
    return files if all(path.is_file() for path in files.values()) else None


def _read_debian(files: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        part: (read_idx(files[f"{part}_images-idx3"]), read_idx(files[f"{part}_labels-idx1"]))
        for part in ("train", "t10k")
    }


def _download_torchvision(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from torchvision.datasets import FashionMNIST

    parts = {}
    for part, train in (("train", True), ("t10k", False)):
        try:
            data = FashionMNIST(str(cache), train=train, download=True)
        except (OSError, RuntimeError) as err:
            raise UserError(
                "Fashion-MNIST is not installed and could not be downloaded "
                f"({err}); install Debian's package: apt-get install dataset-fashion-mnist"
            ) from None
        parts[part] = (data.data.numpy(), data.targets.numpy().astype(np.uint8))
    return parts


def load_arrays(folder: Path) -> DemoArrays:
    """All 70,000 images with labels, file stems and the train/val/test assignment (test: the official 10,000;
    the shifted sets draw on all of them)."""
    files = debian_files(DEBIAN_DIR)
    parts = _read_debian(files) if files else _download_torchvision(folder / "torchvision")
    for part, (images, labels) in parts.items():
        if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max() >= len(CLASSNAMES):
            raise UserError(f"Fashion-MNIST {part} files are inconsistent (shape {images.shape}); reinstall them")
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["t10k"]
    n_train = len(train_x)
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    train, val = holdout_last(labels, np.arange(n_train), VAL_FRACTION)
    return DemoArrays(
        images=np.concatenate([train_x, test_x]),
        labels=labels,
        names=[f"train_{i:05d}" for i in range(n_train)] + [f"test_{i:05d}" for i in range(len(test_x))],
        classnames=CLASSNAMES,
        parts={"train": train, "val": val, "test": np.arange(n_train, len(labels))},
    )


def with_test_sample(arrays: DemoArrays) -> DemoArrays:
    """``arrays`` with the test part cut to :func:`~prompt_ot.data.shifts.redraw_sample`'s 200 images per class."""
    return dataclasses.replace(arrays, parts={**arrays.parts, "test": redraw_sample(arrays)})


def prepare(folder: Path) -> None:
    """Convert Fashion-MNIST into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done: the
    training and validation images and the test sample, nothing else."""
    prepare_demo(folder, SPLIT_FILE, lambda: with_test_sample(load_arrays(Path(folder))))


DATASET = DatasetSpec(
    name="fashion_mnist",
    folder="fashion_mnist",
    template="a photo of a {}, a type of clothing.",
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="demo",
    notes="offline demo dataset; 54,000 train / 6,000 val / 2,000 test (of the 10,000), 28x28 grey stored as RGB PNG",
)
