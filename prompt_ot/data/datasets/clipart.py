"""Clip art (offline demo): colour drawings of 10 kinds of object from Openclipart, public domain.

Read from Debian's ``openclipart-png`` package (PNG files with alpha under ``/usr/share/openclipart/png``).
Classes: the package's sub-folders chosen by one rule, "sub-folders whose content is one kind of object,
recognisable at 32 px, with at least 30 distinct images"; a class is every PNG below its folder, nested
folders included. An image is one file's content: names that are symlinks to the same file, or byte-identical
copies, count once, and an image that falls in two classes is dropped from both (it is ambiguous). A PNG that
cannot be read or decoded is skipped with a warning, and so is one above Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``; the package has four 10,500x16,000 drawings that would take 3 GB and most of the
build's time).

Each image is composited on a white background, converted to RGB, fitted into 64x64 pixels keeping its aspect
ratio (LANCZOS) and padded with white; its file stem is the first 12 hex digits of the sha256 of the source
file's bytes. Split, per class, independent of file-system order: the images sorted by that sha256, the first
40% (rounded) are the test split, the next 10% (rounded half up, at least one) the validation split, the rest
training.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompt_ot.data.demo import DemoArrays, prepare_demo
from prompt_ot.data.registry import DatasetSpec
from prompt_ot.errors import UserError

# class name -> sub-folder of SOURCE_DIR; the order gives the labels 0..9
CLASS_FOLDERS: dict[str, str] = {
    "mammal": "animals/mammals",
    "fruit": "food/fruit",
    "dessert": "food/desserts",
    "piece of clothing": "people/clothing",
    "vehicle": "transportation/vehicles",
    "drink": "food/beverages",
    "bird": "animals/birds",
    "insect": "animals/bugs",
    "house": "buildings/homes",
    "flower": "plants/flowers",
}
CLASSNAMES = list(CLASS_FOLDERS)
SOURCE_DIR = Path("/usr/share/openclipart/png")  # where the Debian package installs the PNG files
SPLIT_FILE = "split_zhou_Clipart.json"
SIZE = 64  # side of the square images, in pixels
STEM_HEX = 12  # hex digits of the sha256 in a file stem
MIN_IMAGES = 20  # fewer usable images in a class is an error
INSTALL = "install Debian's package: apt-get install openclipart-png (or sudo make system-deps)"

log = logging.getLogger(__name__)


@dataclass
class _Source:
    digest: str  # sha256 hex of the file's bytes
    data: bytes
    path: Path  # the first name it was found under, for messages


def _png_files(folder: Path) -> list[Path]:
    """Every PNG below ``folder`` (nested folders included, symlinked files kept), in a fixed order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames) if name.lower().endswith(".png"))
    return found


def _class_sources(folder: Path, unreadable: list[str]) -> dict[str, _Source]:
    """The distinct files below ``folder``, keyed by content hash; unreadable names are added to ``unreadable``."""
    by_real: dict[str, str] = {}
    sources: dict[str, _Source] = {}
    for path in _png_files(folder):
        real = os.path.realpath(path)
        if real in by_real:
            continue
        try:
            data = Path(real).read_bytes()
        except OSError as err:
            unreadable.append(f"{path} ({err.strerror or err})")
            by_real[real] = ""
            continue
        digest = hashlib.sha256(data).hexdigest()
        by_real[real] = digest
        sources.setdefault(digest, _Source(digest, data, path))
    return sources


def to_square_rgb(data: bytes, size: int = SIZE) -> np.ndarray:
    """A PNG's bytes as (size, size, 3) uint8: on white, aspect kept (LANCZOS), padded with white."""
    from PIL import Image

    with warnings.catch_warnings():  # larger than Pillow's MAX_IMAGE_PIXELS: raised, the image is skipped
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    width, height = rgb.size
    scale = size / max(width, height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    if fitted != rgb.size:
        rgb = rgb.resize(fitted, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(rgb, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) for a class of ``n`` images: test round(40%), val max(1, round(10%)), train the rest."""
    n_test = (2 * n + 2) // 5  # round(0.4 n); 2n/5 never ends in .5
    n_val = max(1, (n + 5) // 10)  # round(0.1 n), half up
    return n - n_test - n_val, n_val, n_test


def load_arrays() -> DemoArrays:
    """The usable images of the 10 classes with labels, file stems and the train/val/test assignment."""
    from PIL import Image

    if not SOURCE_DIR.is_dir():
        raise UserError(f"Openclipart's PNG files are not installed ({SOURCE_DIR} does not exist); {INSTALL}")
    unreadable: list[str] = []
    per_class: list[dict[str, _Source]] = []
    for classname, sub in CLASS_FOLDERS.items():
        folder = SOURCE_DIR / sub
        if not folder.is_dir():
            raise UserError(
                f"{folder} does not exist: the openclipart-png install lacks the folder of class {classname!r}; "
                f"reinstall it ({INSTALL})"
            )
        per_class.append(_class_sources(folder, unreadable))
    owners: dict[str, int] = {}
    for sources in per_class:
        for digest in sources:
            owners[digest] = owners.get(digest, 0) + 1
    ambiguous = {digest for digest, count in owners.items() if count > 1}

    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label, (classname, sources) in enumerate(zip(CLASSNAMES, per_class, strict=True)):
        usable: list[tuple[str, np.ndarray]] = []
        for digest in sorted(set(sources) - ambiguous):
            try:
                usable.append((digest, to_square_rgb(sources[digest].data)))
            except (
                OSError,
                ValueError,
                SyntaxError,
                Image.DecompressionBombError,
                Image.DecompressionBombWarning,
            ) as err:
                unreadable.append(f"{sources[digest].path} ({err})")
        if len(usable) < MIN_IMAGES:
            raise UserError(
                f"class {classname!r} ({SOURCE_DIR / CLASS_FOLDERS[classname]}) has {len(usable)} usable images, "
                f"fewer than {MIN_IMAGES}; reinstall openclipart-png ({INSTALL})"
            )
        n_train, n_val, n_test = split_sizes(len(usable))
        for position, (digest, pixels) in enumerate(usable):
            part = "test" if position < n_test else "val" if position < n_test + n_val else "train"
            parts[part].append(len(images))
            images.append(pixels)
            labels.append(label)
            names.append(digest[:STEM_HEX])
        log.info("clipart %s: %d train / %d val / %d test", classname, n_train, n_val, n_test)
    if ambiguous:
        log.info("clipart: dropped %d image(s) that fall in two classes", len(ambiguous))
    if unreadable:
        shown = "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
        log.warning("clipart: skipped %d PNG file(s) that cannot be read or are too large: %s", len(unreadable), shown)
    return DemoArrays(
        images=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        names=names,
        classnames=CLASSNAMES,
        parts={part: np.array(indices, dtype=np.int64) for part, indices in parts.items()},
    )


def prepare(folder: Path) -> None:
    """Convert the clip art into ``folder`` (images/<class>/<name>.png + CoOp split file) unless done."""
    prepare_demo(folder, SPLIT_FILE, load_arrays)


DATASET = DatasetSpec(
    name="clipart",
    folder="clipart",
    template="a clip art picture of the {}.",  # "the": "a" would read "a insect"
    image_dir="images",
    split_file=SPLIT_FILE,
    prepare_fn=prepare,
    kind="demo",
    notes="offline demo dataset; Debian's openclipart-png (1:0.18+dfsg-19), 10 classes, 297 train / 60 val / 240 test "
    "(597 images: mammal 117, fruit 82, dessert 62, piece of clothing 60, vehicle 59, drink 50, bird 48, insect 49, "
    "house 38, flower 32), 64x64 RGB PNG on white",
)
