"""The image store: every needed image decoded once into uint8 pixels in one memory-mapped file.

Training and evaluation then read pixels straight from the store (no JPEG decoding per epoch).
Two modes:
- ``test``: RGB, shorter side resized to the backbone's input size (bicubic, PIL, antialiased) and
  centre-cropped square, exactly open_clip's eval preprocess; ``augment.test_view`` only normalises.
- ``train``: the whole RGB image with its aspect ratio, because the reference pipeline (Dassl) draws
  its random resized crop on the whole original image. An image whose shorter side is at most
  ``train_short_side`` is kept exactly as decoded; a larger one is resized (bicubic, PIL, antialiased,
  aspect kept) so that its shorter side equals it. The default, :func:`default_train_short_side`
  (915 for 224), is the smallest side at which even the smallest crop the augmentation draws still has
  ``image_size`` pixels each way, so every crop is still a downscale and the pre-resize changes views
  very little; ``train_short_side=0`` keeps every image as decoded (crops identical to the reference's).
  Each image's original (H, W) is kept too: ``augment`` draws the crop box on it, so the box
  distribution is the reference's whatever size the pixels are stored at.
Images are converted to RGB before resizing (open_clip converts after; identical for RGB and grey
images, and better for palette images, which PIL would otherwise resize with nearest neighbour).

Layout of a store folder (format version 2): ``pixels.u8``, the raw uint8 HxWx3 images back to back in
item order, and ``index.json`` (format version, preprocessing, labels, relpaths, and for each image its
stored (h, w), byte offset in ``pixels.u8`` and original (H, W)). A build writes into a hidden
temporary folder beside the target and renames it into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import shutil
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from prompt_ot.data.registry import Item
from prompt_ot.errors import UserError, unknown_name
from prompt_ot.utils.io import building_folder, read_json, remove_stale_folders, replace_folder

FORMAT_VERSION = 2
INDEX_NAME = "index.json"
PIXELS_NAME = "pixels.u8"
MODES = ("train", "test")
DECODE_CHUNK = 256  # images decoded ahead of the writer: bounds the memory a build holds
# the training crops' range (Dassl's RandomResizedCrop: area fraction, aspect ratio), defined here because it decides
# how large the store keeps training images; prompt_ot.data.augment draws the crops
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)

log = logging.getLogger(__name__)


def default_train_short_side(image_size: int) -> int:
    """The automatic cap on the shorter side of stored training images (915 for 224).

    The smallest crop the augmentation draws covers ``SCALE[0]`` of the image at the most extreme
    aspect ratio of ``RATIO``; its shorter side is sqrt(SCALE[0] * min(r, 1/r)) times the image's
    shorter side at least. At this cap that is still ``image_size`` pixels, so every crop of an image
    stored at the cap is a downscale (or identity) to the input size.
    """
    narrowest = min(min(r, 1 / r) for r in RATIO)
    return math.ceil(image_size / math.sqrt(SCALE[0] * narrowest))


def check_train_short_side(train_short_side) -> None:
    """A UserError unless ``train_short_side`` is None (automatic) or a non-negative integer."""
    if train_short_side is None:
        return
    if isinstance(train_short_side, bool) or not isinstance(train_short_side, int) or train_short_side < 0:
        raise UserError(
            f"train_short_side must be a non-negative integer (0: keep images as decoded) or automatic, "
            f"got {train_short_side!r}"
        )


def resize_center_crop(image, size: int) -> np.ndarray:
    """A PIL image resized (bicubic, shorter side to ``size``) and centre-cropped to size x size, as uint8 HxWx3."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    image = image.convert("RGB")
    image = F.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    image = F.center_crop(image, [size, size])
    return np.asarray(image, dtype=np.uint8)


def resize_shorter_side_to_cap(image, cap: int) -> np.ndarray:
    """A PIL image as uint8 HxWx3 RGB, resized (bicubic, aspect kept) to shorter side ``cap`` only if it is
    larger; ``cap`` 0 keeps it as decoded. The longer side is scaled and truncated, as torchvision does."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    image = image.convert("RGB")
    if cap and min(image.size) > cap:
        image = F.resize(image, cap, interpolation=InterpolationMode.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


def _decode(path: Path, mode: str, size: int) -> tuple[np.ndarray, tuple[int, int]] | str:
    """The stored pixels of one file and its original (H, W), or the reason it cannot be decoded.

    ``size`` is the test crop's side in "test" mode and the shorter-side cap (0: none) in "train" mode.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            original = (image.height, image.width)
            if mode == "test":
                return resize_center_crop(image, size), original
            return resize_shorter_side_to_cap(image, size), original
    except Image.DecompressionBombError as err:
        return str(err)
    except _DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"


class _PixelWriter:
    """Appends images to ``pixels.u8`` in order and records each one's stored size and byte offset."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.offset = 0
        self.sizes: list[list[int]] = []
        self.offsets: list[int] = []

    def add(self, pixels: np.ndarray) -> None:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        self.sizes.append([int(pixels.shape[0]), int(pixels.shape[1])])
        self.offsets.append(self.offset)
        self.file.write(pixels.data)
        self.offset += pixels.nbytes

    def close(self) -> None:
        self.file.close()


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


def _preprocess(mode: str, image_size: int, train_short_side: int | None) -> tuple[dict, int]:
    """The preprocessing record of a store and the ``size`` argument of ``_decode`` for it."""
    if mode == "test":
        if train_short_side is not None:
            raise UserError("train_short_side applies to training stores only; test stores hold image_size crops")
        record = {
            "convert": "RGB",
            "resize_shorter_side": image_size,
            "interpolation": "bicubic (PIL, antialiased)",
            "center_crop": image_size,
        }
        return record, image_size
    check_train_short_side(train_short_side)
    cap = default_train_short_side(image_size) if train_short_side is None else train_short_side
    if 0 < cap < image_size:
        raise UserError(f"train_short_side must be 0 (no resize) or at least image_size {image_size}, got {cap}")
    record = {
        "convert": "RGB",
        "resize_shorter_side_above": cap or None,
        "interpolation": "bicubic (PIL, antialiased)",
        "aspect_ratio": "kept",
        "center_crop": None,
    }
    return record, cap


def build_store(
    items: Sequence[Item],
    image_root: str | Path,
    out_dir: str | Path,
    mode: str,
    image_size: int,
    train_short_side: int | None = None,
    skip_bad: bool = False,
    classnames: Sequence[str] | None = None,
    workers: int | None = None,
) -> ImageStore:
    """Decode ``items`` (paths under ``image_root``) into a store at ``out_dir`` and open it.

    ``train_short_side`` ("train" mode only): cap on the stored shorter side, None for
    :func:`default_train_short_side`, 0 to keep every image as decoded. An existing store built from
    the same items and settings is reused; any other is replaced once the new one is complete. Bad
    images stop the build with a UserError naming the file, or with ``skip_bad`` are left out,
    counted in the index and logged on one line.
    """
    if mode not in MODES:
        raise unknown_name("store mode", mode, MODES)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    preprocess, size = _preprocess(mode, image_size, train_short_side)
    image_root, out_dir = Path(image_root), Path(out_dir)
    num_classes = len(classnames) if classnames is not None else None
    file_sizes = _check_items(items, image_root, num_classes)
    settings = {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "image_size": image_size,
        "preprocess": preprocess,
        "skip_bad": skip_bad,
        "classnames": None if classnames is None else list(classnames),
    }
    fingerprint = _fingerprint(items, file_sizes, settings)
    if (out_dir / INDEX_NAME).is_file():
        try:
            existing = ImageStore(out_dir)
            if existing.index.get("fingerprint") == fingerprint:
                log.info("reusing image store %s (%d images)", out_dir, len(existing))
                remove_stale_folders(out_dir)  # a killed rebuild may have left one
                return existing
        except UserError as err:
            log.info("rebuilding image store %s: %s", out_dir, err)
    tmp = building_folder(out_dir)  # first removes what killed builds of this target left
    try:
        kept, originals, bad, writer = _decode_all(items, image_root, tmp / PIXELS_NAME, mode, size, skip_bad, workers)
        if bad:
            shown = "; ".join(f"{path} ({why})" for path, why in bad[:5]) + ("; ..." if len(bad) > 5 else "")
            log.warning("skipped %d bad images: %s", len(bad), shown)
        index = {
            **settings,
            "fingerprint": fingerprint,
            "num_images": len(kept),
            "skipped": [path for path, _ in bad],
            "labels": [it.label for it in kept],
            "relpaths": [it.relpath for it in kept],
            "pixels_file": PIXELS_NAME,
            "pixels_bytes": writer.offset,
            "sizes": writer.sizes,
            "offsets": writer.offsets,
            "original_sizes": originals,
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index))
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageStore(out_dir)


def _decode_all(items, image_root: Path, pixels_path: Path, mode: str, size: int, skip_bad: bool, workers: int | None):
    """Decode every item in order (a few threads), appending its pixels to ``pixels_path``.

    Returns the kept items, their original sizes, the (relpath, reason) of the bad ones and the writer.
    """
    writer = _PixelWriter(pixels_path)
    kept: list[Item] = []
    originals: list[list[int]] = []
    bad: list[tuple[str, str]] = []
    try:
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for start in range(0, len(items), DECODE_CHUNK):
                chunk = items[start : start + DECODE_CHUNK]
                paths = [image_root / it.relpath for it in chunk]
                results = pool.map(_decode, paths, [mode] * len(chunk), [size] * len(chunk))
                for it, result in zip(chunk, results, strict=True):
                    if isinstance(result, str):
                        if not skip_bad:
                            raise UserError(
                                f"image {image_root / it.relpath} cannot be decoded ({result}); replace the file "
                                "(download the dataset again) or skip bad images"
                            )
                        bad.append((it.relpath, result))
                        continue
                    pixels, original = result
                    writer.add(pixels)
                    kept.append(it)
                    originals.append(list(original))
    finally:
        writer.close()
    return kept, originals, bad, writer


class ImageStore:
    """A built store, opened read-only.

    ``store[i]`` is image i as a read-only uint8 (h, w, 3) array backed by the memory map (copy it to
    modify it); ``labels``, ``relpaths``, ``stored_sizes`` and ``original_sizes`` ((N, 2) arrays of
    (height, width)) describe the items.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX_NAME
        fix = "delete the folder and build the store again"
        index = read_json(
            index_path,
            what="image store index",
            fix=fix,
            missing=f"no complete image store at {self.path} (no {INDEX_NAME}); build it first",
        )
        version = index.get("format_version") if isinstance(index, dict) else None
        if version == 1:
            raise UserError(
                f"image store {self.path} is in format version 1 (square training crops, written by an older "
                f"prompt-ot); this version reads format {FORMAT_VERSION}, which keeps whole training images: {fix} "
                "(the cache commands rebuild it)"
            )
        if version != FORMAT_VERSION:
            raise UserError(f"image store {self.path} has another format version than {FORMAT_VERSION}; {fix}")
        self.index = index
        try:
            self._read_index(index)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"image store index {index_path} is incomplete or inconsistent ({err}); {fix}") from None
        self._pixels = self._open_pixels()

    def _read_index(self, index: dict) -> None:
        self.mode: str = index["mode"]
        self.image_size: int = index["image_size"]
        self.classnames: list[str] | None = index["classnames"]
        self.relpaths: list[str] = list(index["relpaths"])
        n = len(self.relpaths)
        self.labels = np.asarray(index["labels"], dtype=np.int64).reshape(n)
        self.skipped: list[str] = index["skipped"]
        self.stored_sizes = np.asarray(index["sizes"], dtype=np.int64).reshape(n, 2)
        self.original_sizes = np.asarray(index["original_sizes"], dtype=np.int64).reshape(n, 2)
        self._offsets = np.asarray(index["offsets"], dtype=np.int64).reshape(n)
        nbytes = self.stored_sizes.prod(axis=1) * 3
        expected = np.concatenate([[0], np.cumsum(nbytes)])
        if (
            (self.stored_sizes < 1).any()
            or (self.original_sizes < 1).any()
            or not np.array_equal(self._offsets, expected[:-1])
            or int(expected[-1]) != index["pixels_bytes"]
        ):
            raise ValueError("image sizes and offsets do not add up")
        self._nbytes: int = int(expected[-1])

    def _open_pixels(self) -> np.ndarray:
        path = self.path / PIXELS_NAME
        try:
            found = path.stat().st_size
        except OSError as err:
            raise UserError(f"image store file {path} is missing ({err}); rebuild the store") from None
        if found != self._nbytes:
            raise UserError(
                f"image store file {path} has {found} bytes, the index lists {self._nbytes}; rebuild the store"
            )
        if self._nbytes == 0:  # every image skipped: nothing to map
            return np.empty(0, dtype=np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, i: int) -> np.ndarray:
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for a store of {len(self)} images")
        h, w = self.stored_sizes[i]
        start = int(self._offsets[i])
        return np.asarray(self._pixels[start : start + h * w * 3]).reshape(h, w, 3)

    def original_size(self, i: int) -> tuple[int, int]:
        """(height, width) of image i as decoded, before any resize: the crop box is drawn on it."""
        h, w = self.original_sizes[operator.index(i)]
        return int(h), int(w)

    def __getstate__(self):  # DataLoader workers reopen the memory map instead of pickling it
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pixels = self._open_pixels()
