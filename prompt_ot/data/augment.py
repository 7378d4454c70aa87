"""Seeded, replayable augmentation: random resized crop + horizontal flip, then CLIP normalisation.

Every random number of a training view comes from a generator keyed by (seed, epoch, image index),
``numpy.random.default_rng([seed, epoch, index])``, never from global RNG state, so any view can be
recomputed exactly later (the frozen-feature cache relies on this). The crop box is torchvision's
``RandomResizedCrop.get_params`` (up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect
ratio in ``ratio``, then a centre crop fallback), drawn on the image's ORIGINAL (H, W), the whole image
as decoded, like the reference pipeline (Dassl); the same draws give the same box as torchvision. The
box is then mapped to the stored pixels (the same box when the store kept the image at its original
size, else scaled and rounded; see ``prompt_ot.data.store``), cut out on the host and resized to the
input size by torchvision (bicubic, antialiased), flipped when drawn, and normalised.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from prompt_ot.data.store import RATIO, SCALE, ImageStore
from prompt_ot.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Draws(Protocol):
    """Where ``crop_box`` takes its random numbers from; a ``numpy.random.Generator`` is one."""

    def uniform(self, low: float, high: float) -> float: ...

    def integers(self, low: int, high: int) -> int: ...  # high exclusive


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training view; the same key always yields the same numbers."""
    return np.random.default_rng([seed, epoch, index])


@functools.lru_cache(maxsize=8)
def _log_ratio_bounds(ratio: tuple[float, float]) -> tuple[float, float]:
    """log of the aspect-ratio bounds as torchvision computes them: ``torch.log`` of a float32 tensor."""
    import torch

    low, high = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
    return low, high


def crop_box(height: int, width: int, rng: Draws, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random resized crop of a height x width image.

    torchvision's ``RandomResizedCrop.get_params``, step for step: given the same uniform and integer
    draws from ``rng`` it returns the same box.
    """
    area = height * width
    log_low, log_high = _log_ratio_bounds(tuple(float(r) for r in ratio))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # no valid box in 10 tries: the largest centred box whose aspect ratio is within bounds
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_params(seed: int, epoch: int, index: int, height: int, width: int) -> tuple[int, int, int, int, bool]:
    """Crop box (on a height x width image: the original size) and flip decision of view (seed, epoch, index)."""
    rng = view_rng(seed, epoch, index)
    top, left, h, w = crop_box(height, width, rng)
    flip = bool(rng.random() < 0.5)
    return top, left, h, w, flip


def stored_box(
    box: tuple[int, int, int, int], original: tuple[int, int], stored: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A (top, left, h, w) box on the original (H, W) mapped onto the stored (h, w) pixels.

    The same box when the image is stored at its original size; else its edges scaled and rounded to
    whole pixels, at least one pixel wide and inside the image.
    """
    if tuple(original) == tuple(stored):
        return box
    top, left, h, w = box
    rows = _scaled_span(top, h, stored[0] / original[0], stored[0])
    cols = _scaled_span(left, w, stored[1] / original[1], stored[1])
    return rows[0], cols[0], rows[1], cols[1]


def _scaled_span(start: int, length: int, factor: float, limit: int) -> tuple[int, int]:
    """(start, length) of the span [start, start + length) scaled by ``factor``, rounded, within [0, limit)."""
    first = min(max(round(start * factor), 0), limit - 1)
    last = min(max(round((start + length) * factor), first + 1), limit)
    return first, last - first


def view_crop(
    image: np.ndarray, original_size: tuple[int, int] | None, seed: int, epoch: int, index: int
) -> tuple[np.ndarray, bool]:
    """The crop (a numpy view into ``image``) and flip decision of view (seed, epoch, index).

    ``original_size`` is the (H, W) the image had before the store resized it (None: its own size);
    the box is drawn on it and then mapped onto ``image``.
    """
    stored = (int(image.shape[0]), int(image.shape[1]))
    original = stored if original_size is None else (int(original_size[0]), int(original_size[1]))
    top, left, h, w, flip = view_params(seed, epoch, index, *original)
    top, left, h, w = stored_box((top, left, h, w), original, stored)
    return image[top : top + h, left : left + w], flip


def _normalise(image_chw, mean, std):
    """uint8 CHW to normalised float32; ``mean``/``std`` are sequences or tensors on the image's device."""
    import torch
    import torchvision.transforms.v2.functional as F

    if not torch.is_tensor(mean):
        mean, std = list(mean), list(std)
    return F.normalize(F.to_dtype(image_chw, torch.float32, scale=True), mean, std)


def _to_chw(image: np.ndarray):
    import torch

    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # torch wants to own writable memory
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def _resize_flip(crop_chw, flip: bool, image_size: int):
    """A uint8 CHW crop resized to image_size x image_size (bicubic, antialiased) and flipped when drawn."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    view = F.resize(crop_chw, [image_size, image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return F.hflip(view) if flip else view


def train_view(
    image: np.ndarray,
    seed: int,
    epoch: int,
    index: int,
    image_size: int,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    original_size: tuple[int, int] | None = None,
):
    """The augmented view (float32 CHW tensor, normalised) of a uint8 HxWx3 image under key (seed, epoch, index).

    ``original_size``: the (H, W) the image had before the store resized it, on which the crop box is
    drawn; None when ``image`` is at its original size. :func:`store_view` passes it for a store's item.
    """
    crop, flip = view_crop(image, original_size, seed, epoch, index)
    return _normalise(_resize_flip(_to_chw(crop), flip, image_size), mean, std)


def store_view(store: ImageStore, index: int, seed: int, epoch: int, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """View (seed, epoch, index) of a store's image, its box drawn on the image's original size: what
    ``TrainViews`` yields and what the feature cache encodes."""
    return train_view(store[index], seed, epoch, index, image_size, mean, std, original_size=store.original_size(index))


def test_view(image: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD):
    """A test-store image (already resized and centre-cropped) as a normalised float32 CHW tensor."""
    return _normalise(_to_chw(image), mean, std)


test_view.__test__ = False  # not a pytest test, though its name says so


def _check_key(seed: int, epoch: int) -> None:
    if seed < 0 or epoch < 0:
        raise UserError(f"augmentation seed and epoch must be non-negative, got seed {seed}, epoch {epoch}")


class TrainViews:
    """Map-style dataset of augmented training views; call ``set_epoch`` before each epoch.

    With DataLoader workers, set the epoch before creating the iterator (workers get a copy).
    """

    def __init__(self, store: ImageStore, seed: int, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        _check_key(seed, 0)
        self.store, self.seed, self.image_size, self.mean, self.std = store, seed, image_size, mean, std
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        _check_key(self.seed, epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        view = store_view(self.store, i, self.seed, self.epoch, self.image_size, self.mean, self.std)
        return view, int(self.store.labels[i])

    def device_batch(self, indices: Sequence[int], device):
        """The views of ``indices`` in the current epoch, augmented on ``device`` from the uint8 store.

        The crop boxes come from the same keyed generators as ``__getitem__``; the crops are cut out on
        the host (numpy slices of the memory map), packed into one pinned buffer and copied to the device
        at once (asynchronously), where the resize, flip and normalisation run as one stream of work. On
        the CPU this is exactly ``__getitem__``; on a GPU the bicubic resize rounds to uint8 like the CPU
        kernel but may differ from it by one intensity level in some pixels.
        """
        import torch

        from prompt_ot.devices import to_device

        device = torch.device(device)
        rows = [int(i) for i in indices]
        crops, flips = [], []
        for i in rows:
            crop, flip = view_crop(self.store[i], self.store.original_size(i), self.seed, self.epoch, i)
            crops.append(crop)
            flips.append(flip)
        sizes = [crop.size for crop in crops]
        host = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=device.type == "cuda")
        packed, start = host.numpy(), 0
        for crop, size in zip(crops, sizes):
            packed[start : start + size].reshape(crop.shape)[...] = crop
            start += size
        pieces = to_device(host, device).split(sizes)
        views = [
            _resize_flip(piece.view(crop.shape).permute(2, 0, 1), flip, self.image_size)
            for piece, crop, flip in zip(pieces, crops, flips)
        ]
        labels = to_device(torch.as_tensor(np.asarray(self.store.labels)[rows], dtype=torch.long), device)
        return _normalise(torch.stack(views), *self._moments(device)), labels

    def _moments(self, device):
        """Mean and std as tensors on ``device``, made once: from lists, normalising copies them every call."""
        import torch

        cache = self.__dict__.setdefault("_moments_on", {})
        if device not in cache:
            cache[device] = tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in (self.mean, self.std))
        return cache[device]


class TestImages:
    """Map-style dataset of normalised test images from a test-mode store."""

    __test__ = False  # not a pytest test class

    def __init__(self, store: ImageStore, mean=CLIP_MEAN, std=CLIP_STD):
        if store.mode != "test":
            raise UserError(f"image store {store.path} was built for {store.mode!r}; evaluation needs a 'test' store")
        self.store, self.mean, self.std = store, mean, std

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        return test_view(self.store[i], self.mean, self.std), int(self.store.labels[i])


def batch_train_views(
    store: ImageStore, indices: Sequence[int], seed: int, epoch: int, image_size: int, mean=CLIP_MEAN, std=CLIP_STD
):
    """The views of ``indices`` in ``epoch`` stacked into a (B, 3, S, S) tensor, with their labels."""
    import torch

    _check_key(seed, epoch)
    views = [store_view(store, int(i), seed, epoch, image_size, mean, std) for i in indices]
    labels = torch.as_tensor([int(store.labels[int(i)]) for i in indices], dtype=torch.long)
    return torch.stack(views), labels
