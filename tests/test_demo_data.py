"""Offline demo datasets: Fashion-MNIST and scikit-learn's digits in the benchmark layout."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from prompt_ot.data import shifts
from prompt_ot.data.datasets import digits, fashion_mnist
from prompt_ot.data.demo import class_folder, prepare_demo, read_idx
from prompt_ot.data.registry import classnames_of, dataset_names, dataset_spec
from prompt_ot.errors import UserError

FASHION_CLASSES = "T-shirt/top,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle boot".split(",")
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
has_debian_fashion = fashion_mnist.debian_files(fashion_mnist.DEBIAN_DIR) is not None
needs_debian = pytest.mark.skipif(
    not has_debian_fashion,
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist); CI installs it",
)


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.format == "PNG"
        return np.asarray(image)


def test_the_demo_datasets_are_registered():
    assert {"digits", "fashion_mnist"} <= set(dataset_names("demo"))
    for name, split_file in (("digits", "split_zhou_Digits.json"), ("fashion_mnist", "split_zhou_FashionMNIST.json")):
        spec = dataset_spec(name)
        assert spec.kind == "demo" and spec.prepare_fn is not None
        assert spec.folder == name and spec.split_file == split_file and spec.image_dir == "images"
        assert spec.template.count("{}") == 1


def test_digits_conversion(tmp_path):
    from sklearn.datasets import load_digits

    spec = dataset_spec("digits")
    folder = spec.dataset_dir(tmp_path)
    spec.prepare_fn(folder)
    split = spec.load_split(tmp_path)
    assert sum(len(items) for items in split.values()) == 1797
    assert len({it.relpath for items in split.values() for it in items}) == 1797
    assert classnames_of(split) == DIGIT_CLASSES
    source = load_digits()
    for part in ("train", "val", "test"):
        counts = Counter(it.label for it in split[part])
        assert sorted(counts) == list(range(10))  # stratified: every class in every part
        for label, n in counts.items():
            share = n / int((source.target == label).sum())
            assert abs(share - {"train": 0.6, "val": 0.2, "test": 0.2}[part]) < 0.03
    for it in split["train"][:3] + split["val"][-2:] + split["test"][100:102]:
        index = int(it.relpath.split("_")[-1].removesuffix(".png"))
        assert source.target[index] == it.label and it.classname == DIGIT_CLASSES[it.label]
        assert it.relpath.startswith(class_folder(it.classname) + "/")
        pixels = png_pixels(spec.image_root(tmp_path) / it.relpath)
        assert pixels.shape == (8, 8, 3)
        assert np.array_equal(pixels[..., 0], pixels[..., 2])
        np.testing.assert_array_equal(pixels[..., 1], digits.to_uint8(source.images[index]))
        np.testing.assert_array_equal(np.round(pixels[..., 1].astype(float) * 16 / 255), source.images[index])


def test_digits_prepare_is_idempotent_and_repairs(tmp_path):
    folder = tmp_path / "digits"
    assert prepare_demo(folder, digits.SPLIT_FILE, digits.load_arrays)
    split_file = folder / digits.SPLIT_FILE
    some_png = next((folder / "images" / "three").iterdir())
    stamps = (split_file.stat().st_mtime_ns, some_png.stat().st_mtime_ns)
    assert not prepare_demo(folder, digits.SPLIT_FILE, lambda: pytest.fail("loaded the source again"))
    assert (split_file.stat().st_mtime_ns, some_png.stat().st_mtime_ns) == stamps
    some_png.unlink()  # an incomplete folder is rebuilt
    assert prepare_demo(folder, digits.SPLIT_FILE, digits.load_arrays)
    assert some_png.is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["images", digits.SPLIT_FILE]


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    """Debian-style IDX files with 20 training and 2 test images per class."""
    rng = np.random.default_rng(0)
    source = tmp_path / "debian"
    source.mkdir()
    arrays = {
        "train": (rng.integers(0, 256, (200, 28, 28)), rng.permutation(np.repeat(np.arange(10), 20))),
        "t10k": (rng.integers(0, 256, (20, 28, 28)), np.repeat(np.arange(10), 2)),
    }
    for part, (images, labels) in arrays.items():
        write_idx(source / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(source / f"{part}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", source)
    return arrays


def test_fashion_conversion_of_idx_files(tmp_path, tiny_fashion, monkeypatch):
    """Train and val from the training file (the last 10% of each class is val), the test split the seeded sample of
    the test file that Sketch and R redraw (here 1 of each class's 2): each image with its own pixels and label; the
    test images left out are not written."""
    monkeypatch.setattr(shifts, "TEST_PER_CLASS", 1)
    spec = dataset_spec("fashion_mnist")
    spec.prepare_fn(spec.dataset_dir(tmp_path / "data"))
    split = spec.load_split(tmp_path / "data")
    assert {part: len(items) for part, items in split.items()} == {"train": 180, "val": 20, "test": 10}
    sample = shifts.redraw_sample(fashion_mnist.load_arrays(tmp_path))
    assert [it.relpath.rsplit("/", 1)[1] for it in split["test"]] == [f"test_{i - 200:05d}.png" for i in sample]
    assert len(list(spec.image_root(tmp_path / "data").glob("*/*.png"))) == 180 + 20 + 10
    assert classnames_of(split) == FASHION_CLASSES
    train_x, train_y = tiny_fashion["train"]
    test_x, test_y = tiny_fashion["t10k"]
    # validation: the last 10% (2 of 20) of each class in file order
    for label in range(10):
        positions = np.flatnonzero(train_y == label)
        assert {it.relpath for it in split["val"] if it.label == label} == {
            f"{class_folder(FASHION_CLASSES[label])}/train_{i:05d}.png" for i in positions[-2:]
        }
    for part, (source_x, source_y) in (
        ("train", (train_x, train_y)),
        ("val", (train_x, train_y)),
        ("test", (test_x, test_y)),
    ):
        for it in split[part][::7]:
            index = int(it.relpath.rsplit("_", 1)[1].removesuffix(".png"))
            assert it.label == source_y[index]
            pixels = png_pixels(spec.image_root(tmp_path / "data") / it.relpath)
            for channel in range(3):
                np.testing.assert_array_equal(pixels[..., channel], source_x[index])
    assert (spec.image_root(tmp_path / "data") / "t_shirt_top").is_dir()


def test_fashion_falls_back_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    seen = []

    class Offline:
        def __init__(self, root, train, download):
            seen.append((root, train, download))
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.prepare(tmp_path / "fashion_mnist")
    assert seen == [(str(tmp_path / "fashion_mnist" / "torchvision"), True, True)]
    assert not (tmp_path / "fashion_mnist" / fashion_mnist.SPLIT_FILE).exists()


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="bad.gz"):
        read_idx(path)
    write_idx(path, np.zeros((3, 2, 2)))
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as fh:
        fh.write(data[:-1])
    with pytest.raises(UserError, match=r"bad.gz holds 11 values but its header says \(3, 2, 2\)"):
        read_idx(path)


@needs_debian
def test_debian_fashion_mnist_arrays(tmp_path):
    arrays = fashion_mnist.load_arrays(tmp_path)
    assert arrays.images.shape == (70000, 28, 28) and arrays.images.dtype == np.uint8
    assert {part: len(ix) for part, ix in arrays.parts.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert Counter(arrays.labels[arrays.parts["val"]].tolist()) == {label: 600 for label in range(10)}
    assert Counter(arrays.labels[arrays.parts["test"]].tolist()) == {label: 1000 for label in range(10)}


@needs_debian
@pytest.mark.slow
def test_debian_fashion_mnist_full_prepare(tmp_path):
    spec = dataset_spec("fashion_mnist")
    spec.prepare_fn(spec.dataset_dir(tmp_path))
    split = spec.load_split(tmp_path)
    assert {part: len(items) for part, items in split.items()} == {"train": 54000, "val": 6000, "test": 2000}
    assert classnames_of(split) == FASHION_CLASSES
    # the test split is the sample that Sketch and R redraw: 200 official test images of each class
    sample = shifts.redraw_sample(fashion_mnist.load_arrays(tmp_path))
    assert [it.relpath.rsplit("/", 1)[1] for it in split["test"]] == [f"test_{i - 60000:05d}.png" for i in sample]
    assert Counter(it.label for it in split["test"]) == {label: 200 for label in range(10)}
    train_x = read_idx(fashion_mnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz")
    test_x = read_idx(fashion_mnist.DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")
    for it in split["train"][::9000] + split["test"][::3000]:
        stem = it.relpath.rsplit("/", 1)[1].removesuffix(".png")
        source = train_x if stem.startswith("train") else test_x
        pixels = png_pixels(spec.image_root(tmp_path) / it.relpath)
        np.testing.assert_array_equal(pixels[..., 0], source[int(stem.split("_")[1])])
