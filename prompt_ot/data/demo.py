"""Offline demo datasets written in the same layout as the benchmark datasets.

Small real image sets that are reachable without internet (Fashion-MNIST and Openclipart's clip art from
Debian packages, scikit-learn's digits) are converted into ``<folder>/images/<class>/<name>.png`` (RGB PNGs) plus a
CoOp-format split file, so the demo flows through exactly the code the benchmarks use. The images
folder is written under a temporary name and renamed when complete; the split file is written last,
so its presence together with a matching image count marks a finished dataset.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompt_ot.data.registry import Item, Split, read_coop_split, write_coop_split
from prompt_ot.errors import UserError

IMAGE_DIR = "images"

log = logging.getLogger(__name__)


@dataclass
class DemoArrays:
    """A whole source dataset in memory: uint8 images, labels, file stems and the split.

    ``images`` is grey (N, H, W), stored as RGB with the grey value in every channel, or colour (N, H, W, 3).
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    classnames: list[str]
    parts: dict[str, np.ndarray]  # "train" | "val" | "test" -> indices into images


def class_folder(classname: str) -> str:
    """A file-system-safe folder name for a class ("T-shirt/top" -> "t_shirt_top")."""
    return re.sub(r"[^a-z0-9]+", "_", classname.lower()).strip("_")


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array in a gzip'ed IDX file (the MNIST format: magic 0x0000 08 <ndim>, big-endian sizes)."""
    try:
        data = gzip.open(path).read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable gzip file ({err}); reinstall the dataset package") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise UserError(f"{path} is not an IDX file of unsigned bytes; reinstall the dataset package")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise UserError(f"{path} holds {len(data) - offset} values but its header says {shape}; reinstall the package")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def holdout_last(labels: np.ndarray, indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, val): the last ``fraction`` of each class, in index order, is held out."""
    train, val = [], []
    for label in np.unique(labels[indices]):
        members = np.sort(indices[labels[indices] == label])
        n_val = int(round(len(members) * fraction))
        train.append(members[: len(members) - n_val])
        val.append(members[len(members) - n_val :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _expected_split(arrays: DemoArrays) -> Split:
    split: Split = {}
    for part in ("train", "val", "test"):
        split[part] = [
            Item(
                f"{class_folder(arrays.classnames[arrays.labels[i]])}/{arrays.names[i]}.png",
                int(arrays.labels[i]),
                arrays.classnames[arrays.labels[i]],
            )
            for i in arrays.parts[part]
        ]
    return split


def is_complete(folder: Path, split_file: str) -> bool:
    """The split file exists and the images folder holds one file per listed image."""
    if not (folder / split_file).is_file() or not (folder / IMAGE_DIR).is_dir():
        return False
    try:
        split = read_coop_split(folder / split_file)
    except UserError:
        return False
    listed = sum(len(items) for items in split.values())
    on_disk = sum(1 for path in (folder / IMAGE_DIR).glob("*/*.png"))
    return listed == on_disk


def _write_pngs(target: Path, arrays: DemoArrays, split: Split) -> None:
    from PIL import Image

    for classname in arrays.classnames:
        (target / class_folder(classname)).mkdir(parents=True, exist_ok=True)
    for part in ("train", "val", "test"):
        for i, item in zip(arrays.parts[part], split[part], strict=True):
            pixels = arrays.images[i]
            rgb = pixels if pixels.ndim == 3 else np.stack([pixels, pixels, pixels], axis=-1)
            Image.fromarray(rgb).save(target / item.relpath, format="PNG")


def prepare_demo(folder: str | Path, split_file: str, load: Callable[[], DemoArrays]) -> bool:
    """Write the dataset that ``load`` returns into ``folder`` unless it is complete; True when it wrote."""
    folder = Path(folder)
    if is_complete(folder, split_file):
        log.info("%s is complete; nothing to do", folder)
        return False
    arrays = load()
    split = _expected_split(arrays)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / split_file).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{IMAGE_DIR}.building-", dir=folder))
    try:
        _write_pngs(tmp, arrays, split)
        final = folder / IMAGE_DIR
        if final.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{IMAGE_DIR}.old-", dir=folder))
            final.rename(stale / IMAGE_DIR)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_coop_split(folder / split_file, split)
    log.info("wrote %d images and %s to %s", len(arrays.images), split_file, folder)
    return True
