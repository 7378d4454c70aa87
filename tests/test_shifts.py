"""The four domain-shifted Fashion-MNIST test sets (prompt_ot/data/shifts.py, datasets fashion_mnist_{v2,sketch,r,a}):
each builder against its definition, computed here independently on small inputs, and each dataset built from
Debian-style source files and accepted by the configuration as a domain generalisation target only."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from prompt_ot.config import validate_params
from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist
from prompt_ot.data.demo import DemoArrays, class_folder
from prompt_ot.data.registry import classnames_of, dataset_names, dataset_spec
from prompt_ot.errors import UserError
from tests.support.data import fake_fashion_debian
from tests.support.params import shrunk_params

SHIFTED = ["fashion_mnist_v2", "fashion_mnist_sketch", "fashion_mnist_r", "fashion_mnist_a"]
EMPTY = np.zeros(0, dtype=np.int64)


def synthetic(num_classes: int, per_class: dict[str, int], seed: int, size: int = 5, noise: float = 90.0):
    """A DemoArrays of grey size x size images: one random pattern per class plus Gaussian noise, clipped to uint8;
    ``per_class`` images of each class in each part, the parts' indices in that order, labels interleaved."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(40, 215, (num_classes, size, size))
    labels = np.concatenate([np.tile(np.arange(num_classes), n) for n in per_class.values()])
    images = np.clip(np.rint(patterns[labels] + rng.normal(0, noise, (len(labels), size, size))), 0, 255)
    bounds = np.cumsum([0] + [n * num_classes for n in per_class.values()])
    return DemoArrays(
        images=images.astype(np.uint8),
        labels=labels.astype(np.int64),
        names=[f"img_{i:04d}" for i in range(len(labels))],
        classnames=[f"class {c}" for c in range(num_classes)],
        parts={part: np.arange(bounds[k], bounds[k + 1]) for k, part in enumerate(per_class)},
    )


# ---------------------------------------------------------------------------------------------- V2


def test_v2_is_a_seeded_class_balanced_sample_of_the_val_part(monkeypatch):
    source = synthetic(4, {"train": 5, "val": 6, "test": 3}, seed=1)
    monkeypatch.setattr(shifts, "V2_PER_CLASS", 4)
    v2 = shifts.v2_arrays(source)
    val = {source.names[i]: i for i in source.parts["val"]}
    assert len(v2.names) == len(set(v2.names)) == 16 and set(v2.names) <= set(val)  # val images, no repeats
    for k, name in enumerate(v2.names):
        np.testing.assert_array_equal(v2.images[k], source.images[val[name]])
        assert v2.labels[k] == source.labels[val[name]]
    assert Counter(v2.labels.tolist()) == {c: 4 for c in range(4)}
    assert {p: len(ix) for p, ix in v2.parts.items()} == {"train": 0, "val": 0, "test": 16}
    again = shifts.v2_arrays(source)
    assert again.names == v2.names and np.array_equal(again.images, v2.images)
    monkeypatch.setattr(shifts, "SEED", shifts.SEED + 1)
    assert shifts.v2_arrays(source).names != v2.names  # the seed decides the sample
    monkeypatch.setattr(shifts, "V2_PER_CLASS", 7)
    with pytest.raises(UserError, match="6 candidate images, fewer than the 7 needed"):
        shifts.v2_arrays(source)


# ---------------------------------------------------------------------------------------------- Sketch


def sobel_squared_by_hand(image: np.ndarray) -> np.ndarray:
    """Sobel's 3x3 kernels applied pixel by pixel, the border pixel repeated outside the image."""
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    smooth = np.array([1.0, 2.0, 1.0])
    out = np.zeros(image.shape)
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            window = padded[i : i + 3, j : j + 3]
            down = (window[2] - window[0]) @ smooth
            across = (window[:, 2] - window[:, 0]) @ smooth
            out[i, j] = down**2 + across**2
    return out


def sketch_by_hand(image: np.ndarray, threshold: float) -> np.ndarray:
    magnitude2 = sobel_squared_by_hand(image)
    return np.where(magnitude2 >= threshold**2 * magnitude2.max(), 0, 255)


def test_a_flat_image_sketches_to_white():
    for value in (0, 93, 255):
        out = shifts.sketch(np.full((5, 7), value, dtype=np.uint8))
        assert out.dtype == np.uint8 and out.shape == (5, 7) and (out == 255).all()


def test_a_filled_square_sketches_to_its_outline():
    image = np.zeros((12, 12), dtype=np.uint8)
    image[3:9, 3:9] = 200
    out = shifts.sketch(image)
    np.testing.assert_array_equal(out, sketch_by_hand(image, shifts.SKETCH_THRESHOLD))
    # every pixel next to the square's boundary (its 3x3 window not constant) and no other: the weakest of them, the
    # pixel diagonally outside a corner, has 1/3 of the strongest magnitude (the corner pixel), above the threshold
    assert shifts.SKETCH_THRESHOLD < 1 / 3
    padded = np.pad(image, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    on_boundary = windows.min(axis=(-1, -2)) != windows.max(axis=(-1, -2))
    np.testing.assert_array_equal(out == 0, on_boundary)
    assert set(np.unique(out).tolist()) == {0, 255} and (out[5:7, 5:7] == 255).all()


@pytest.mark.parametrize("threshold", [0.1, shifts.SKETCH_THRESHOLD, 0.5])
def test_sketch_matches_a_sobel_by_hand(threshold):
    rng = np.random.default_rng(3)
    for shape in ((6, 9), (28, 28)):
        image = rng.integers(0, 256, shape).astype(np.uint8)
        np.testing.assert_array_equal(shifts.sketch(image, threshold), sketch_by_hand(image, threshold))


def test_sketch_set_draws_the_shared_test_sample(monkeypatch):
    source = synthetic(3, {"train": 2, "val": 1, "test": 6}, seed=2, size=8)
    monkeypatch.setattr(shifts, "TEST_PER_CLASS", 4)
    out = shifts.sketch_arrays(source)
    test = {source.names[i]: i for i in source.parts["test"]}
    assert len(set(out.names)) == 12 and set(out.names) <= set(test)
    assert Counter(out.labels.tolist()) == {c: 4 for c in range(3)}
    for k, name in enumerate(out.names):
        np.testing.assert_array_equal(out.images[k], sketch_by_hand(source.images[test[name]], shifts.SKETCH_THRESHOLD))
    assert out.names == shifts.rendition_arrays(source).names  # R redraws the same images


# ---------------------------------------------------------------------------------------------- R


def luma(colour) -> float:
    r, g, b = (int(v) for v in colour)
    return 0.299 * r + 0.587 * g + 0.114 * b


def level_by_hand(grey: int, background: int, levels: int) -> int:
    """-1 below ``background``, else which of ``levels`` equal-width bins of [background, 256) holds ``grey``."""
    if grey < background:
        return -1
    width = Fraction(256 - background, levels)
    return next(k for k in range(levels) if grey < background + (k + 1) * width)


def test_poster_of_a_small_image():
    greys = [0, 3, 7, 8, 9, 90, 91, 120, 173, 174, 200, 255]
    image = np.array(greys, dtype=np.uint8).reshape(3, 4)
    palette = np.array([[10, 200, 30], [5, 5, 60], [120, 30, 200], [250, 240, 100]], dtype=np.uint8)
    out = shifts.poster(image, palette)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for grey, pixel in zip(greys, out.reshape(-1, 3)):
        np.testing.assert_array_equal(pixel, palette[1 + level_by_hand(grey, shifts.POSTER_BACKGROUND, 3)])
    background = image < shifts.POSTER_BACKGROUND
    assert background.sum() == 3 and (out[background] == palette[0]).all()  # the background pixels: one colour
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 4  # background + 3 levels


def test_poster_with_a_drawn_palette_is_monotone_in_the_grey_level():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for seed in range(20):
        palette = shifts.draw_palette(np.random.default_rng(seed))
        assert palette.shape == (4, 3) and len(np.unique(palette, axis=0)) == 4
        out = shifts.poster(image, palette).reshape(-1, 3)
        garment = [luma(out[g]) for g in range(shifts.POSTER_BACKGROUND, 256)]
        assert garment == sorted(garment) and len(set(garment)) == 3  # 3 colours, lighter with the grey level
        assert len(np.unique(out, axis=0)) == 4 and (out[: shifts.POSTER_BACKGROUND] == palette[0]).all()
    again = shifts.draw_palette(np.random.default_rng(5))
    np.testing.assert_array_equal(again, shifts.draw_palette(np.random.default_rng(5)))


def test_rendition_set_uses_one_seeded_palette_per_image(monkeypatch):
    source = synthetic(3, {"train": 2, "val": 1, "test": 5}, seed=4, size=6)
    monkeypatch.setattr(shifts, "TEST_PER_CLASS", 3)
    out = shifts.rendition_arrays(source)
    index = {source.names[i]: i for i in source.parts["test"]}
    assert out.images.shape == (9, 6, 6, 3)
    for k, name in enumerate(out.names):
        palette = shifts.draw_palette(np.random.default_rng([shifts.SEED, shifts.PALETTE_STREAM, index[name]]))
        np.testing.assert_array_equal(out.images[k], shifts.poster(source.images[index[name]], palette))


# ---------------------------------------------------------------------------------------------- A


def ncm_errors_by_hand(source: DemoArrays) -> set[int]:
    """The test indices that the nearest class mean (pixels / 255, squared distance, ties: lower class) gets wrong."""
    flat = source.images.reshape(len(source.images), -1).astype(np.float64) / 255
    classes = range(len(source.classnames))
    means = {c: np.mean([flat[i] for i in source.parts["train"] if source.labels[i] == c], axis=0) for c in classes}
    wrong = set()
    for i in source.parts["test"]:
        distances = [float(np.sum((flat[i] - means[c]) ** 2)) for c in classes]
        if distances.index(min(distances)) != source.labels[i]:
            wrong.add(int(i))
    return wrong


def test_a_is_exactly_what_the_nearest_class_mean_gets_wrong():
    source = synthetic(4, {"train": 15, "val": 0, "test": 25}, seed=5)
    wrong = ncm_errors_by_hand(source)
    assert 0 < len(wrong) < len(source.parts["test"])  # a real hard subset, not all nor nothing
    assert set(shifts.misclassified(source).tolist()) == wrong
    hard = shifts.adversarial_arrays(source)  # fewer than A_CAP: all of them
    assert sorted(hard.names) == sorted(source.names[i] for i in wrong)
    for k, name in enumerate(hard.names):
        i = source.names.index(name)
        assert hard.labels[k] == source.labels[i] and np.array_equal(hard.images[k], source.images[i])


def test_a_is_capped_by_a_class_stratified_sample(monkeypatch):
    source = synthetic(4, {"train": 15, "val": 0, "test": 25}, seed=5)
    wrong = sorted(ncm_errors_by_hand(source))
    cap = len(wrong) // 2
    monkeypatch.setattr(shifts, "A_CAP", cap)
    hard = shifts.adversarial_arrays(source)
    chosen = [source.names.index(name) for name in hard.names]
    assert len(chosen) == cap and set(chosen) <= set(wrong)
    per_class = Counter(source.labels[wrong].tolist())
    for c, n in Counter(source.labels[chosen].tolist()).items():
        assert abs(n - cap * per_class[c] / len(wrong)) < 1  # each class its share, rounded
    assert shifts.adversarial_arrays(source).names == hard.names


def test_stratified_cap_gives_the_largest_remainders_the_places_left():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    indices = np.arange(10)
    # cap 4 of (5, 3, 2): shares 2.0, 1.2, 0.8 -> floors (2, 1, 0), the place left to class 2 (remainder 0.8)
    chosen = shifts.stratified_cap(labels, indices, 4, np.random.default_rng(0))
    assert Counter(labels[chosen].tolist()) == {0: 2, 1: 1, 2: 1} and list(chosen) == sorted(set(chosen))
    # cap 5: shares 2.5, 1.5, 1.0 -> floors (2, 1, 1), remainders tie at 0.5: the lower class gets the place
    assert Counter(labels[shifts.stratified_cap(labels, indices, 5, np.random.default_rng(0))].tolist()) == {
        0: 3,
        1: 1,
        2: 1,
    }
    np.testing.assert_array_equal(shifts.stratified_cap(labels, indices[::-1], 10, np.random.default_rng(0)), indices)


def test_a_refuses_a_subset_without_some_class(monkeypatch):
    source = synthetic(3, {"train": 10, "val": 0, "test": 4}, seed=6, noise=1.0)  # nothing wrong
    with pytest.raises(UserError, match="gets no test image of class 0, class 1, class 2 wrong"):
        shifts.adversarial_arrays(source)


# ---------------------------------------------------------------------------------------------- the datasets


@pytest.fixture
def debian_source(tmp_path, monkeypatch):
    """Debian-style Fashion-MNIST files with 30 training (27 train + 3 val) and 6 test images per class; sizes of
    the shifted sets shrunk to fit."""
    arrays = fake_fashion_debian(tmp_path / "debian", train_per_class=30, test_per_class=6)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(shifts, "V2_PER_CLASS", 2)
    monkeypatch.setattr(shifts, "TEST_PER_CLASS", 4)
    monkeypatch.setattr(shifts, "A_CAP", 30)
    return arrays


def source_image(arrays, stem: str) -> np.ndarray:
    part, index = stem.split("_")
    return arrays["train" if part == "train" else "t10k"][0][int(index)]


@pytest.mark.parametrize("name", SHIFTED)
def test_a_shifted_dataset_builds_from_the_source_files(tmp_path, debian_source, name):
    spec = dataset_spec(name)
    assert name in dataset_names("target_only") and spec.template == fashion_mnist.DATASET.template
    assert (spec.folder, spec.image_dir) == (name, "images") and spec.split_file.startswith("split_zhou_FashionMNIST")
    folder = spec.dataset_dir(tmp_path / "data")
    spec.prepare_fn(folder)
    split = spec.load_split(tmp_path / "data")
    assert classnames_of(split) == fashion_mnist.CLASSNAMES
    expected = {"fashion_mnist_v2": 20, "fashion_mnist_sketch": 40, "fashion_mnist_r": 40, "fashion_mnist_a": 30}
    assert {part: len(items) for part, items in split.items()} == {"train": 0, "val": 0, "test": expected[name]}
    assert sorted(p.name for p in folder.iterdir()) == ["images", spec.split_file]
    stems = [it.relpath.rsplit("/", 1)[1].removesuffix(".png") for it in split["test"]]
    assert len(set(stems)) == len(stems)
    train_y, test_y = debian_source["train"][1], debian_source["t10k"][1]
    val_positions = {i for c in range(10) for i in np.flatnonzero(train_y == c)[-3:]}
    for it, stem in zip(split["test"], stems):
        part, index = stem.split("_")
        assert it.relpath == f"{class_folder(it.classname)}/{stem}.png"
        assert it.label == (train_y if part == "train" else test_y)[int(index)]
        if name == "fashion_mnist_v2":
            assert part == "train" and int(index) in val_positions
        else:
            assert part == "test"
        with Image.open(spec.image_root(tmp_path / "data") / it.relpath) as image:
            assert image.mode == "RGB" and image.size == (28, 28)
            pixels = np.asarray(image)
        grey = source_image(debian_source, stem)
        if name == "fashion_mnist_r":
            palette = shifts.draw_palette(np.random.default_rng([shifts.SEED, shifts.PALETTE_STREAM, 300 + int(index)]))
            np.testing.assert_array_equal(pixels, shifts.poster(grey, palette))
        else:
            drawn = sketch_by_hand(grey, shifts.SKETCH_THRESHOLD) if name == "fashion_mnist_sketch" else grey
            for channel in range(3):
                np.testing.assert_array_equal(pixels[..., channel], drawn)
    split_file = folder / spec.split_file
    stamp = split_file.stat().st_mtime_ns
    spec.prepare_fn(folder)  # a second prepare finds it complete
    assert split_file.stat().st_mtime_ns == stamp


def test_the_hard_subset_dataset_holds_what_the_classifier_gets_wrong(tmp_path, debian_source):
    source = fashion_mnist.load_arrays(tmp_path)
    wrong = ncm_errors_by_hand(source)
    assert len(wrong) > shifts.A_CAP  # noise images: most of the 60 are wrong, so the cap of 30 applies
    spec = dataset_spec("fashion_mnist_a")
    spec.prepare_fn(spec.dataset_dir(tmp_path / "data"))
    listed = {
        source.names.index(it.relpath.rsplit("/", 1)[1].removesuffix(".png"))
        for it in spec.load_split(tmp_path / "data")["test"]
    }
    assert len(listed) == shifts.A_CAP and listed <= wrong


@pytest.mark.parametrize("name", SHIFTED)
def test_a_missing_source_gives_the_fashion_mnist_error(tmp_path, monkeypatch, name):
    import torchvision.datasets

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    spec = dataset_spec(name)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        spec.prepare_fn(spec.dataset_dir(tmp_path))
    assert not (spec.dataset_dir(tmp_path) / spec.split_file).exists()


@pytest.mark.parametrize("name", SHIFTED)
def test_the_config_takes_it_as_a_dg_target_but_not_as_a_source(name):
    datasets = ["digits", "fashion_mnist", name]
    targets = {
        "cross_dataset": {"sources": ["fashion_mnist"], "evaluate": {"targets": ["digits"]}},
        "domain_generalization": {"sources": ["fashion_mnist"], "evaluate": {"targets": [name]}},
    }
    validate_params(shrunk_params(datasets=datasets, protocols=targets))
    as_source = {"cross_dataset": {"sources": [name], "evaluate": {"targets": ["digits"]}}}
    with pytest.raises(UserError, match=rf"cross_dataset.sources\[0\] = '{name}' has a test split only"):
        validate_params(shrunk_params(datasets=datasets, protocols=as_source))
    with pytest.raises(UserError, match=rf"base2novel.datasets\[0\] = '{name}' has a test split only"):
        validate_params(shrunk_params(datasets=datasets, protocols={"base2novel": {"datasets": [name]}}))
