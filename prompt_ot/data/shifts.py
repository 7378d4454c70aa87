"""Four domain-shifted test sets of Fashion-MNIST, built the way ImageNet's variants relate to ImageNet.

The paper's domain generalisation protocol tests prompts learnt on ImageNet on ImageNet-V2 (a fresh sample of the
same distribution), -Sketch (sketch renderings), -R (renditions in other styles) and -A (natural adversarial
examples: images that a chosen model gets wrong). The demo does the same with Fashion-MNIST as the source
(``prompt_ot/data/datasets/fashion_mnist.py``: train / val / test parts):

- **V2** (:func:`v2_arrays`): ``V2_PER_CLASS`` = 200 images per class drawn without replacement from the
  source's val part (seeded): held-out images of the same distribution that the demo never trains or tests on.
- **Sketch** (:func:`sketch_arrays`): the test sample (:func:`redraw_sample`: ``TEST_PER_CLASS`` = 200 test images
  per class, seeded, 2,000 in all), each drawn as its edge map (:func:`sketch`).
- **R** (:func:`rendition_arrays`): the same 2,000 test images, each drawn as a flat-colour poster
  (:func:`poster`) with a palette drawn per image (:func:`draw_palette`).
- **A** (:func:`adversarial_arrays`): the test images that a nearest-class-mean classifier on raw pixels, fitted on
  the source's train part, gets wrong (:func:`nearest_class_mean`, :func:`ncm_predict`); when more than
  ``A_CAP`` = 2,000, a seeded class-stratified sample of 2,000 of them (:func:`stratified_cap`).

Every builder is deterministic: its random draws come from ``numpy.random.default_rng([SEED, stream])``. Each
returns a :class:`~prompt_ot.data.demo.DemoArrays` whose images are all in its test part; the dataset modules
``fashion_mnist_{v2,sketch,r,a}`` write them with :func:`~prompt_ot.data.demo.prepare_demo`.

``python -m prompt_ot.data.shift_preview --preview OUT.png`` draws the source and the four sets side by side
(``docs/demo/shifts.png``; :func:`preview`). Fashion-MNIST's own test split is the same sample as Sketch's and R's
(``prompt_ot/data/datasets/fashion_mnist.py`` imports :func:`redraw_sample`, so nothing here imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from prompt_ot.data.demo import DemoArrays, prepare_demo
from prompt_ot.data.registry import DatasetSpec
from prompt_ot.errors import UserError

SEED = 2024
# the random streams, one per use: default_rng([SEED, stream]) (the poster palettes add the image's index)
V2_STREAM, TEST_SAMPLE_STREAM, A_CAP_STREAM, PALETTE_STREAM = 1, 2, 3, 4

V2_PER_CLASS = 200  # V2: images per class from the source's val part (600 per class there)
TEST_PER_CLASS = 200  # Sketch and R: test images per class (1,000 per class there); the same sample for both
SKETCH_THRESHOLD = 0.2  # an edge: Sobel magnitude >= 0.2 x the image's largest Sobel magnitude
POSTER_LEVELS = 3  # R: grey levels of the garment
POSTER_BACKGROUND = 8  # R: source pixels below this are background
A_CAP = 2000  # A: at most this many images (a class-stratified sample when the model gets more wrong)

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma of an RGB colour


def _rng(*stream: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *stream])


def as_test_set(source: DemoArrays, indices: np.ndarray, images: np.ndarray | None = None) -> DemoArrays:
    """The source images at ``indices`` (or ``images`` drawn from them, in the same order) as a test-only set."""
    indices = np.asarray(indices, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return DemoArrays(
        images=source.images[indices] if images is None else images,
        labels=source.labels[indices],
        names=[source.names[i] for i in indices],
        classnames=list(source.classnames),
        parts={"train": empty, "val": empty, "test": np.arange(len(indices))},
    )


# ---------------------------------------------------------------------------------------------- samples


def class_balanced_sample(
    labels: np.ndarray, candidates: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """``per_class`` of the ``candidates`` (indices into ``labels``) of each class 0..num_classes-1, drawn without
    replacement (classes in order, each from its candidates in ascending order); sorted."""
    candidates = np.sort(np.asarray(candidates, dtype=np.int64))
    chosen = []
    for label in range(num_classes):
        members = candidates[labels[candidates] == label]
        if len(members) < per_class:
            raise UserError(f"class {label} has {len(members)} candidate images, fewer than the {per_class} needed")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_cap(labels: np.ndarray, indices: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """``indices`` (sorted) when at most ``cap``; else a class-stratified sample of ``cap`` of them: class c gets
    floor(cap * n_c / n) places, the places left over go one each to the classes with the largest remainders
    (ties: the lower class), and each class's places are drawn without replacement; sorted."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if len(indices) <= cap:
        return indices
    classes, counts = np.unique(labels[indices], return_counts=True)
    exact = cap * counts / len(indices)
    quota = np.floor(exact).astype(np.int64)
    by_remainder = sorted(range(len(classes)), key=lambda k: (-(exact[k] - quota[k]), classes[k]))
    for k in by_remainder[: cap - int(quota.sum())]:
        quota[k] += 1
    chosen = [rng.choice(indices[labels[indices] == c], size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def redraw_sample(source: DemoArrays) -> np.ndarray:
    """The test images that Sketch and R redraw: TEST_PER_CLASS per class of the source's test part, seeded."""
    return class_balanced_sample(
        source.labels, source.parts["test"], TEST_PER_CLASS, len(source.classnames), _rng(TEST_SAMPLE_STREAM)
    )


# ---------------------------------------------------------------------------------------------- sketch


def sobel_squared(image: np.ndarray) -> np.ndarray:
    """The squared Sobel gradient magnitude of a grey image (scipy.ndimage.sobel along both axes, borders
    reflected), in float64: exact for uint8 input."""
    grey = np.asarray(image, dtype=np.float64)
    return ndimage.sobel(grey, axis=0) ** 2 + ndimage.sobel(grey, axis=1) ** 2


def sketch(image: np.ndarray, threshold: float = SKETCH_THRESHOLD) -> np.ndarray:
    """A grey image drawn as dark lines on white: its edge pixels 0, every other pixel 255 (uint8, same shape).

    An edge pixel is one whose Sobel gradient magnitude is at least ``threshold`` times the image's largest
    (compared squared: magnitude² >= threshold² x largest magnitude²). A flat image has no edges: all white.
    """
    magnitude2 = sobel_squared(image)
    peak = magnitude2.max()
    edges = magnitude2 >= threshold**2 * peak if peak > 0 else np.zeros(magnitude2.shape, dtype=bool)
    return np.where(edges, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- rendition


def draw_palette(rng: np.random.Generator, levels: int = POSTER_LEVELS) -> np.ndarray:
    """(levels + 1, 3) uint8 RGB colours: row 0 the background, rows 1.. the garment's levels from dark to light.

    Each colour's channels are drawn uniformly from 0..255; drawn again (from the same generator) until all the
    colours differ and the garment colours' lumas (BT.601) differ; the garment colours are sorted by luma.
    """
    while True:
        colours = rng.integers(0, 256, size=(levels + 1, 3), dtype=np.int64)
        garment = colours[1:]
        luma = garment @ LUMA
        if len(np.unique(colours, axis=0)) == levels + 1 and len(np.unique(luma)) == levels:
            return np.concatenate([colours[:1], garment[np.argsort(luma)]]).astype(np.uint8)


def poster_levels(image: np.ndarray, background: int = POSTER_BACKGROUND, levels: int = POSTER_LEVELS) -> np.ndarray:
    """Per pixel: -1 for background (grey < ``background``), else the garment level
    min(levels - 1, (grey - background) * levels // (256 - background)): equal-width bins of background..255."""
    grey = np.asarray(image, dtype=np.int64)
    level = np.minimum(levels - 1, (grey - background) * levels // (256 - background))
    return np.where(grey < background, -1, level)


def poster(
    image: np.ndarray, palette: np.ndarray, background: int = POSTER_BACKGROUND, levels: int = POSTER_LEVELS
) -> np.ndarray:
    """A grey image re-drawn as a flat-colour poster, (H, W, 3) uint8: background pixels (grey < ``background``)
    in ``palette[0]``, a garment pixel of level k (:func:`poster_levels`) in ``palette[1 + k]``."""
    return np.asarray(palette, dtype=np.uint8)[poster_levels(image, background, levels) + 1]


# ---------------------------------------------------------------------------------------------- hard subset


def _pixels(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0


def nearest_class_mean(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, pixels) float64: each class's mean image, pixels scaled to [0, 1]."""
    x = _pixels(images)
    return np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])


def ncm_predict(means: np.ndarray, images: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """The class whose mean is nearest (squared Euclidean distance, pixels in [0, 1]); ties: the lower class."""
    x = _pixels(images)
    predictions = [
        np.argmin(((x[start : start + chunk, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
        for start in range(0, len(x), chunk)
    ]
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def misclassified(source: DemoArrays) -> np.ndarray:
    """The test images (indices into ``source``, sorted) that the nearest-class-mean classifier fitted on the
    source's train part gets wrong."""
    train, test = source.parts["train"], np.sort(source.parts["test"])
    means = nearest_class_mean(source.images[train], source.labels[train], len(source.classnames))
    return test[ncm_predict(means, source.images[test]) != source.labels[test]]


# ---------------------------------------------------------------------------------------------- the four sets


def v2_arrays(source: DemoArrays) -> DemoArrays:
    """V2: V2_PER_CLASS val images per class, seeded; the images and labels unchanged."""
    chosen = class_balanced_sample(
        source.labels, source.parts["val"], V2_PER_CLASS, len(source.classnames), _rng(V2_STREAM)
    )
    return as_test_set(source, chosen)


def sketch_arrays(source: DemoArrays) -> DemoArrays:
    """Sketch: the test sample, each image drawn by :func:`sketch`."""
    chosen = redraw_sample(source)
    return as_test_set(source, chosen, np.stack([sketch(source.images[i]) for i in chosen]))


def rendition_arrays(source: DemoArrays) -> DemoArrays:
    """R: the test sample, each image drawn by :func:`poster` with the palette drawn from
    default_rng([SEED, PALETTE_STREAM, index of the image in the source])."""
    chosen = redraw_sample(source)
    images = [poster(source.images[i], draw_palette(_rng(PALETTE_STREAM, int(i)))) for i in chosen]
    return as_test_set(source, chosen, np.stack(images))


def adversarial_arrays(source: DemoArrays) -> DemoArrays:
    """A: the misclassified test images, capped at A_CAP by :func:`stratified_cap`; every class must remain."""
    chosen = stratified_cap(source.labels, misclassified(source), A_CAP, _rng(A_CAP_STREAM))
    absent = sorted(set(range(len(source.classnames))) - set(source.labels[chosen].tolist()))
    if absent:
        raise UserError(
            f"the classifier gets no test image of {', '.join(source.classnames[c] for c in absent)} wrong; "
            "the hard subset would not name every class"
        )
    return as_test_set(source, chosen)


# ---------------------------------------------------------------------------------------------- preview

PREVIEW_CLASSES = (0, 1, 3, 5, 8, 9)  # T-shirt/top, trouser, dress, sandal, bag, ankle boot
PREVIEW_SCALE = 4


def shifted_dataset(
    name: str,
    source: DatasetSpec,
    load: Callable[[Path], DemoArrays],
    shift: Callable[[DemoArrays], DemoArrays],
    split_file: str,
    test_images: int,
    notes: str,
    num_classes: int = 10,
) -> DatasetSpec:
    """The registry entry of a shifted test set: ``shift`` of the arrays ``load`` reads for ``source`` (given the
    set's own folder, where a download may go), written like the demo datasets, test split only (target_only), with
    the source's class names and template."""

    def prepare(folder: Path) -> None:
        prepare_demo(folder, split_file, lambda: shift(load(Path(folder))))

    return DatasetSpec(
        name=name,
        folder=name,
        template=source.template,
        image_dir="images",
        split_file=split_file,
        prepare_fn=prepare,
        kind="target_only",
        notes=notes,
        extra={"num_classes": num_classes, "split_sizes": (0, 0, test_images)},
    )


def preview(source: DemoArrays, out: Path) -> None:
    """One PNG grid: rows Fashion-MNIST (the first test-sample image of each of PREVIEW_CLASSES), its Sketch and
    its R; then V2 and A (other images: the first of each of those classes in that set)."""
    from PIL import Image, ImageDraw, ImageFont

    sample = redraw_sample(source)
    first = [sample[source.labels[sample] == c][0] for c in PREVIEW_CLASSES]
    v2, hard = v2_arrays(source), adversarial_arrays(source)

    def firsts(arrays: DemoArrays) -> list[np.ndarray]:
        return [arrays.images[np.flatnonzero(arrays.labels == c)[0]] for c in PREVIEW_CLASSES]

    rows = [
        ("Fashion-MNIST", [source.images[i] for i in first]),
        ("Sketch", [sketch(source.images[i]) for i in first]),
        ("R", [poster(source.images[i], draw_palette(_rng(PALETTE_STREAM, int(i)))) for i in first]),
        ("V2", firsts(v2)),
        ("A", firsts(hard)),
    ]
    size, pad, label_width = 28 * PREVIEW_SCALE, 4, 140
    grid = Image.new("RGB", (label_width + len(PREVIEW_CLASSES) * (size + pad), len(rows) * (size + pad)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=16)
    for r, (name, images) in enumerate(rows):
        y = r * (size + pad)
        draw.text((6, y + size // 2), name, fill="black", font=font, anchor="lm")
        for c, pixels in enumerate(images):
            rgb = pixels if pixels.ndim == 3 else np.stack([pixels] * 3, axis=-1)
            tile = Image.fromarray(rgb).resize((size, size), Image.NEAREST)
            grid.paste(tile, (label_width + c * (size + pad), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG", optimize=True)
