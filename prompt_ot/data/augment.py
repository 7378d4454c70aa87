"""Seeded, replayable augmentation: random resized crop + horizontal flip, then CLIP normalisation.

Every random number of a training view comes from a generator keyed by (seed, epoch, image index),
``numpy.random.default_rng([seed, epoch, index])``, never from global RNG state, so any view can be
recomputed exactly later (the frozen-feature cache relies on this). The crop box follows torchvision's
RandomResizedCrop: up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio in
``ratio``, then a centre crop fallback; the pixel work is torchvision's (bicubic, antialiased).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from prompt_ot.data.store import ImageStore
from prompt_ot.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training view; the same key always yields the same numbers."""
    return np.random.default_rng([seed, epoch, index])


def crop_box(height: int, width: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random resized crop, drawn from ``rng``."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
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
    """Crop box and flip decision of the view of image ``index`` in ``epoch``."""
    rng = view_rng(seed, epoch, index)
    top, left, h, w = crop_box(height, width, rng)
    flip = bool(rng.random() < 0.5)
    return top, left, h, w, flip


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


def train_view(
    image: np.ndarray, seed: int, epoch: int, index: int, image_size: int, mean=CLIP_MEAN, std=CLIP_STD
):
    """The augmented view (float32 CHW tensor, normalised) of a uint8 HxWx3 image under key (seed, epoch, index)."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    top, left, h, w, flip = view_params(seed, epoch, index, image.shape[0], image.shape[1])
    crop = F.resized_crop(
        _to_chw(image), top, left, h, w, [image_size, image_size],
        interpolation=InterpolationMode.BICUBIC, antialias=True,
    )
    if flip:
        crop = F.hflip(crop)
    return _normalise(crop, mean, std)


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
        view = train_view(self.store[i], self.seed, self.epoch, i, self.image_size, self.mean, self.std)
        return view, int(self.store.labels[i])

    def device_batch(self, indices: Sequence[int], device):
        """The views of ``indices`` in the current epoch, augmented on ``device`` from the uint8 store.

        Only uint8 pixels cross to the device (pinned, asynchronous); the crop boxes come from the same
        keyed generators as ``__getitem__``, and the crop, resize, flip and normalisation run there as one
        stream of work. On the CPU this is exactly ``__getitem__``; on a GPU the bicubic resize rounds to
        uint8 like the CPU kernel but may differ from it by one intensity level in some pixels.
        """
        import torch
        import torchvision.transforms.v2.functional as F
        from torchvision.transforms import InterpolationMode

        from prompt_ot.devices import to_device

        device = torch.device(device)
        rows = [int(i) for i in indices]
        pixels = to_device(torch.from_numpy(np.stack([self.store[i] for i in rows])), device)
        pixels = pixels.permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        height, width = pixels.shape[-2:]
        views = []
        for k, i in enumerate(rows):
            top, left, h, w, flip = view_params(self.seed, self.epoch, i, height, width)
            crop = F.resized_crop(pixels[k], top, left, h, w, [self.image_size, self.image_size],
                                  interpolation=InterpolationMode.BICUBIC, antialias=True)
            views.append(F.hflip(crop) if flip else crop)
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
    views = [train_view(store[int(i)], seed, epoch, int(i), image_size, mean, std) for i in indices]
    labels = torch.as_tensor([int(store.labels[int(i)]) for i in indices], dtype=torch.long)
    return torch.stack(views), labels
