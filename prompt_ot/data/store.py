"""The image store: every needed image decoded once into uint8 arrays in memory-mapped .npy shards.

Training and evaluation then read pixels straight from the shards (no JPEG decoding per epoch).
Two modes:
- ``test``: RGB, shorter side resized to the backbone's input size (bicubic, PIL, antialiased) and
  centre-cropped square, exactly open_clip's eval preprocess; ``augment.test_view`` only normalises.
- ``train``: RGB, shorter side resized to ``train_size`` (default 8/7 of the input size, 256 for 224)
  and centre-cropped square; the random resized crop is taken from this image. Deviation: the
  reference pipeline crops the original full-resolution image, so crops here see a slightly smaller
  field of view (the centre square) at a lower resolution.
Images are converted to RGB before resizing (open_clip converts after; identical for RGB and grey
images, and better for palette images, which PIL would otherwise resize with nearest neighbour).

Layout of a store folder: ``index.json`` (format version, preprocessing, labels, relpaths, shards)
and ``shard_00000.npy`` ... of shape (count, S, S, 3). A build writes into a hidden temporary folder
beside the target and renames it into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Sequence

import numpy as np

from prompt_ot.data.registry import Item
from prompt_ot.errors import UserError, unknown_name
from prompt_ot.utils.io import building_folder, remove_stale_folders, replace_folder

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
MODES = ("train", "test")
DEFAULT_SHARD_SIZE = 512

log = logging.getLogger(__name__)


def default_train_size(image_size: int) -> int:
    """Side of the stored training images: 8/7 of the input size (256 for 224), like the usual resize-then-crop."""
    return image_size * 8 // 7


def resize_center_crop(image, size: int) -> np.ndarray:
    """A PIL image resized (bicubic, shorter side to ``size``) and centre-cropped to size x size, as uint8 HxWx3."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    image = image.convert("RGB")
    image = F.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    image = F.center_crop(image, [size, size])
    return np.asarray(image, dtype=np.uint8)


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


def _decode(path: Path, size: int) -> np.ndarray | str:
    """The preprocessed pixels of one file, or the reason it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return resize_center_crop(image, size)
    except Image.DecompressionBombError as err:
        return str(err)
    except _DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"


class _ShardWriter:
    """Collects images into fixed-size shards and saves each full one as ``shard_NNNNN.npy``."""

    def __init__(self, folder: Path, shard_size: int, size: int):
        self.folder, self.shard_size = folder, shard_size
        self.buffer = np.empty((shard_size, size, size, 3), dtype=np.uint8)
        self.filled = 0
        self.shards: list[dict] = []

    def add(self, image: np.ndarray) -> None:
        self.buffer[self.filled] = image
        self.filled += 1
        if self.filled == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.filled == 0:
            return
        name = f"shard_{len(self.shards):05d}.npy"
        np.save(self.folder / name, self.buffer[: self.filled])
        self.shards.append({"file": name, "count": self.filled})
        self.filled = 0


def _check_items(items: Sequence[Item], image_root: Path, num_classes: int | None) -> list[int]:
    """Labels in range and files present (checked before any decoding); returns the file sizes."""
    for it in items:
        if it.label < 0 or (num_classes is not None and it.label >= num_classes):
            allowed = f"0..{num_classes - 1} ({num_classes} classes given)" if num_classes else "non-negative"
            raise UserError(
                f"image {image_root / it.relpath} has label {it.label}, labels must be {allowed}; "
                "the split or manifest does not match the class list"
            )
    sizes, missing = [], []
    for it in items:
        try:
            sizes.append((image_root / it.relpath).stat().st_size)
        except FileNotFoundError:
            missing.append(str(image_root / it.relpath))
    if missing:
        more = f" (and {len(missing) - 1} more listed images)" if len(missing) > 1 else ""
        raise UserError(f"image {missing[0]} does not exist{more}; download the dataset again or check --root")
    return sizes


def _fingerprint(items: Sequence[Item], sizes: list[int], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for it, size in zip(items, sizes, strict=True):
        digest.update(f"{it.relpath}\0{it.label}\0{size}\n".encode())
    return digest.hexdigest()


def build_store(
    items: Sequence[Item],
    image_root: str | Path,
    out_dir: str | Path,
    mode: str,
    image_size: int,
    train_size: int | None = None,
    skip_bad: bool = False,
    classnames: Sequence[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
) -> "ImageStore":
    """Decode ``items`` (paths under ``image_root``) into a store at ``out_dir`` and open it.

    An existing store built from the same items and settings is reused; any other is replaced once
    the new one is complete. Bad images stop the build with a UserError naming the file, or with
    ``skip_bad`` are left out, counted in the index and logged on one line.
    """
    if mode not in MODES:
        raise unknown_name("store mode", mode, MODES)
    if mode == "test" and train_size is not None:
        raise UserError("train_size applies to training stores only; test stores hold image_size crops")
    size = image_size if mode == "test" else (train_size or default_train_size(image_size))
    if image_size < 1 or size < image_size:
        raise UserError(f"image sizes must be positive and train_size >= image_size; got {image_size}, {size}")
    image_root, out_dir = Path(image_root), Path(out_dir)
    num_classes = len(classnames) if classnames is not None else None
    sizes = _check_items(items, image_root, num_classes)
    preprocess = {
        "convert": "RGB",
        "resize_shorter_side": size,
        "interpolation": "bicubic (PIL, antialiased)",
        "center_crop": size,
    }
    settings = {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "image_size": image_size,
        "preprocess": preprocess,
        "skip_bad": skip_bad,
        "classnames": None if classnames is None else list(classnames),
    }
    fingerprint = _fingerprint(items, sizes, settings)
    if (out_dir / INDEX_NAME).is_file():
        try:
            existing = ImageStore(out_dir)
            if existing.index.get("fingerprint") == fingerprint:
                log.info("reusing image store %s (%d images)", out_dir, len(existing))
                remove_stale_folders(out_dir)  # a killed rebuild may have left one
                return existing
        except UserError:
            pass  # a broken store is rebuilt below
    tmp = building_folder(out_dir)  # first removes what killed builds of this target left
    try:
        writer = _ShardWriter(tmp, shard_size, size)
        kept: list[Item] = []
        bad: list[tuple[str, str]] = []
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for start in range(0, len(items), shard_size):
                chunk = items[start : start + shard_size]
                results = pool.map(_decode, [image_root / it.relpath for it in chunk], repeat(size))
                for it, result in zip(chunk, results, strict=True):
                    if isinstance(result, str):
                        if not skip_bad:
                            raise UserError(
                                f"image {image_root / it.relpath} cannot be decoded ({result}); replace the file "
                                "(download the dataset again) or skip bad images"
                            )
                        bad.append((it.relpath, result))
                        continue
                    writer.add(result)
                    kept.append(it)
        writer.flush()
        if bad:
            shown = "; ".join(f"{path} ({why})" for path, why in bad[:5]) + ("; ..." if len(bad) > 5 else "")
            log.warning("skipped %d bad images: %s", len(bad), shown)
        index = {
            **settings,
            "stored_size": size,
            "fingerprint": fingerprint,
            "shard_size": shard_size,
            "shards": writer.shards,
            "num_images": len(kept),
            "skipped": [path for path, _ in bad],
            "labels": [it.label for it in kept],
            "relpaths": [it.relpath for it in kept],
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index))
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageStore(out_dir)


class ImageStore:
    """A built store, opened read-only: ``store[i]`` is a uint8 HxWx3 array, with ``labels`` and ``relpaths``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX_NAME
        fix = "delete the folder and build the store again"
        if not index_path.is_file():
            raise UserError(f"no complete image store at {self.path} (no {INDEX_NAME}); build it first")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"image store index {index_path} is not valid JSON ({err}); {fix}") from None
        if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
            raise UserError(f"image store {self.path} has another format version than {FORMAT_VERSION}; {fix}")
        self.index = index
        self.mode: str = index["mode"]
        self.image_size: int = index["image_size"]
        self.stored_size: int = index["stored_size"]
        self.classnames: list[str] | None = index["classnames"]
        self.relpaths: list[str] = index["relpaths"]
        self.labels = np.asarray(index["labels"], dtype=np.int64)
        self.skipped: list[str] = index["skipped"]
        self._shard_size: int = index["shard_size"]
        counts = [s["count"] for s in index["shards"]]
        if sum(counts) != len(self.relpaths) or any(c != self._shard_size for c in counts[:-1]):
            raise UserError(f"image store {self.path}: shard counts do not match the index; {fix}")
        self._shards = self._open_shards()

    def _open_shards(self) -> list[np.ndarray]:
        shards = []
        for shard in self.index["shards"]:
            path = self.path / shard["file"]
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise UserError(f"image store shard {path} is missing or corrupt ({err}); rebuild the store") from None
            expected = (shard["count"], self.stored_size, self.stored_size, 3)
            if array.shape != expected or array.dtype != np.uint8:
                raise UserError(
                    f"image store shard {path} has shape {array.shape}, expected {expected}; rebuild the store"
                )
            shards.append(array)
        return shards

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for a store of {len(self)} images")
        return np.array(self._shards[i // self._shard_size][i % self._shard_size])

    def __getstate__(self):  # DataLoader workers reopen the memory maps instead of pickling them
        state = self.__dict__.copy()
        state["_shards"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._shards = self._open_shards()
