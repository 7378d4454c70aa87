"""Seeded augmentation: replayable views keyed by (seed, epoch, index), and open_clip-exact test images."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from prompt_ot.data.augment import (
    CLIP_MEAN,
    CLIP_STD,
    TestImages,
    TrainViews,
    batch_train_views,
    crop_box,
    test_view,
    train_view,
    view_params,
)
from prompt_ot.data.registry import Item
from prompt_ot.data.store import build_store
from prompt_ot.errors import UserError


def smooth_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 11, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def normalise(array_hwc: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    x = torch.from_numpy(np.array(array_hwc, dtype=np.float32)).permute(2, 0, 1) / 255
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture
def image() -> np.ndarray:
    return np.asarray(smooth_image(3, 40, 40)).copy()


@pytest.fixture
def stores(tmp_path):
    """(train store, test store, image root, items) over 6 images of several shapes."""
    root = tmp_path / "images"
    items = []
    for k, (w, h) in enumerate([(50, 37), (37, 50), (41, 41), (64, 30), (30, 64), (45, 33)]):
        relpath = f"c{k % 2}/img_{k}." + ("png" if k == 4 else "jpg")
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        picture = smooth_image(k, w, h)
        (picture.convert("L") if k == 4 else picture).save(root / relpath)
        items.append(Item(relpath, k % 2, f"class{k % 2}"))
    train = build_store(items, root, tmp_path / "train", "train", 32, train_size=40)
    test = build_store(items, root, tmp_path / "test", "test", 32)
    return train, test, root, items


def test_same_key_same_pixels_other_keys_differ(image):
    view = train_view(image, seed=1, epoch=2, index=3, image_size=32)
    assert view.dtype == torch.float32 and view.shape == (3, 32, 32)
    assert torch.equal(view, train_view(image, 1, 2, 3, 32))
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        assert not torch.equal(view, train_view(image, *other, 32)), other


def test_views_ignore_global_random_state(image):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    first = train_view(image, 5, 0, 7, 32)
    torch.manual_seed(123), np.random.seed(456), random.seed(789)
    torch.rand(10), np.random.rand(10), random.random()
    assert torch.equal(first, train_view(image, 5, 0, 7, 32))


def test_view_equals_crop_resize_flip_of_the_drawn_box(image):
    """A PIL reference of the same box (bicubic) agrees to within a few grey levels."""
    flips = 0
    for index in range(30):
        top, left, h, w, flip = view_params(1, 0, index, 40, 40)
        flips += flip
        reference = Image.fromarray(image).crop((left, top, left + w, top + h)).resize((32, 32), Image.BICUBIC)
        if flip:
            reference = reference.transpose(Image.FLIP_LEFT_RIGHT)
        diff = (train_view(image, 1, 0, index, 32) - normalise(np.asarray(reference))).abs()
        assert diff.max() < 0.035 and diff.mean() < 0.008  # one grey level is about 0.015 after normalisation
    assert 0 < flips < 30


def test_crop_boxes_follow_the_random_resized_crop_bounds():
    flips, areas = 0, []
    for index in range(2000):
        top, left, h, w, flip = view_params(0, 0, index, 60, 80)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        area = h * w / (60 * 80)
        areas.append(area)
        assert 0.07 <= area <= 1.0
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1  # rounding to whole pixels
        flips += flip
    assert 0.45 < flips / 2000 < 0.55
    assert min(areas) < 0.15 and max(areas) > 0.9  # the whole scale range is used


class AlwaysHigh:
    """A stand-in generator that always draws the top of each range."""

    def uniform(self, low, high):
        return high

    def integers(self, low, high):
        return high - 1


def test_crop_box_falls_back_to_a_centre_crop():
    # a 10 x 100 strip: full-area boxes of ratio 4/3 never fit, so the centre crop of ratio 4/3 is used
    assert crop_box(10, 100, AlwaysHigh()) == (0, 43, 10, 13)
    # a tall strip: the full width and h = round(10 / (3/4)) = 13, centred
    assert crop_box(100, 10, AlwaysHigh()) == (43, 0, 13, 10)
    # a square whose full-area 4/3 box is too wide: the whole image
    assert crop_box(30, 30, AlwaysHigh()) == (0, 0, 30, 30)


def test_test_store_matches_open_clip_preprocess(stores, capsys):
    import open_clip

    _, test, root, items = stores
    preprocess = open_clip.image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    worst = 0.0
    for i, it in enumerate(items):
        with Image.open(root / it.relpath) as picture:
            reference = preprocess(picture)
        worst = max(worst, (test_view(test[i]) - reference).abs().max().item())
    with capsys.disabled():
        print(f"\nmax |store + test_view - open_clip preprocess| = {worst:.3g}")
    assert worst < 1e-6


def test_datasets_and_batches(stores):
    train, test, _, items = stores
    views = TrainViews(train, seed=3, image_size=32)
    assert len(views) == 6
    view, label = views[4]
    assert label == items[4].label
    assert torch.equal(view, train_view(train[4], 3, 0, 4, 32))
    views.set_epoch(1)
    assert torch.equal(views[4][0], train_view(train[4], 3, 1, 4, 32))
    assert not torch.equal(views[4][0], view)

    batch, labels = batch_train_views(train, [5, 0, 4], seed=3, epoch=1, image_size=32)
    assert batch.shape == (3, 3, 32, 32) and labels.tolist() == [items[5].label, items[0].label, items[4].label]
    assert torch.equal(batch[2], views[4][0])

    test_images = TestImages(test)
    image, label = test_images[2]
    assert label == items[2].label and torch.equal(image, test_view(test[2]))
    with pytest.raises(UserError, match="'train'.*needs a 'test' store"):
        TestImages(train)
    with pytest.raises(UserError, match="non-negative"):
        views.set_epoch(-1)


def test_dataloader_workers_reproduce_the_views(stores):
    train, *_ = stores
    views = TrainViews(train, seed=9, image_size=32)
    views.set_epoch(2)
    loader = torch.utils.data.DataLoader(views, batch_size=3, num_workers=2, shuffle=False)
    batches = torch.cat([images for images, _ in loader])
    expected, _ = batch_train_views(train, range(6), seed=9, epoch=2, image_size=32)
    assert torch.equal(batches, expected)


def test_custom_normalisation(image):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    np.testing.assert_allclose(test_view(image, mean, std).numpy(), normalise(image, mean, std).numpy(), atol=1e-6)
    assert math.isclose(float(test_view(np.zeros((2, 2, 3), np.uint8), mean, std)[0, 0, 0]), -2.0)


def test_device_batch_is_the_views_of_getitem(stores):
    train, _, _, items = stores
    views = TrainViews(train, seed=4, image_size=32)
    views.set_epoch(3)
    batch, labels = views.device_batch([5, 0, 4, 4], "cpu")
    assert batch.dtype == torch.float32 and batch.shape == (4, 3, 32, 32)
    for row, i in zip(batch, [5, 0, 4, 4]):
        assert torch.equal(row, views[i][0])
    assert labels.tolist() == [items[5].label, items[0].label, items[4].label, items[4].label]


@pytest.mark.gpu
def test_device_batch_on_the_gpu_is_within_one_intensity_level(stores):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    train, *_ = stores
    views = TrainViews(train, seed=4, image_size=32)
    views.set_epoch(1)
    batch, labels = views.device_batch(range(6), "cuda")
    assert batch.is_cuda and labels.is_cuda
    expected, _ = batch_train_views(train, range(6), seed=4, epoch=1, image_size=32)
    level = 1 / 255 / min(CLIP_STD)
    assert (batch.cpu() - expected).abs().max().item() <= level + 1e-6
