"""The image store: decoded pixels (square test crops, whole training images up to a cap), original sizes,
failure modes, atomic builds, reuse and the old format."""

from __future__ import annotations

import json
import logging
import math
import pickle

import numpy as np
import pytest
from PIL import Image

from prompt_ot.data import store as store_module
from prompt_ot.data.registry import Item
from prompt_ot.data.store import (
    ImageStore,
    build_store,
    default_train_short_side,
    resize_center_crop,
    resize_shorter_side_to_cap,
)
from prompt_ot.errors import UserError
from tests.support.data import SIZES, make_images, smooth_image


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    return root, make_images(root)


def test_test_store_holds_resized_centre_crops(images, tmp_path):
    root, items = images
    store = build_store(items, root, tmp_path / "store", "test", 32)
    assert len(store) == len(items) == 7
    assert store.relpaths == [it.relpath for it in items]
    assert store.labels.tolist() == [it.label for it in items]
    assert store.mode == "test" and store.stored_sizes.tolist() == [[32, 32]] * 7
    assert store.original_sizes.tolist() == [[h, w] for w, h in SIZES]
    for i, it in enumerate(items):
        with Image.open(root / it.relpath) as image:
            expected = resize_center_crop(image, 32)
        assert store[i].dtype == np.uint8 and store[i].shape == (32, 32, 3)
        np.testing.assert_array_equal(store[i], expected)
    # the grey PNG became RGB with three equal channels
    assert np.array_equal(store[2][..., 0], store[2][..., 2])
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["format_version"] == 2
    assert index["offsets"] == [k * 32 * 32 * 3 for k in range(7)]
    assert (tmp_path / "store" / "pixels.u8").stat().st_size == 7 * 32 * 32 * 3
    assert index["preprocess"] == {
        "convert": "RGB",
        "resize_shorter_side": 32,
        "interpolation": "bicubic (PIL, antialiased)",
        "center_crop": 32,
    }


def test_resize_center_crop_reference():
    """Shorter side to the target size (longer side scaled and truncated), then the centre square."""
    image = smooth_image(0, 50, 37)
    reference = image.resize((43, 32), Image.BICUBIC)  # 50 * 32 / 37 = 43.2 -> 43
    reference = np.asarray(reference)[:, 6:38]  # left edge round((43 - 32) / 2) = round(5.5) = 6
    np.testing.assert_array_equal(resize_center_crop(image, 32), reference)


def _decoded(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_train_store_keeps_whole_images_up_to_the_cap(images, tmp_path):
    root, items = images
    whole = build_store(items, root, tmp_path / "whole", "train", 32)  # automatic cap 131: all kept as decoded
    assert whole.image_size == 32 and whole.mode == "train"
    for i, it in enumerate(items):
        np.testing.assert_array_equal(whole[i], _decoded(root / it.relpath))
        assert whole.original_size(i) == whole[i].shape[:2] == (SIZES[i][1], SIZES[i][0])

    capped = build_store(items, root, tmp_path / "capped", "train", 32, train_short_side=35)
    assert capped.original_sizes.tolist() == whole.original_sizes.tolist()
    # (50, 37): shorter side 37 > 35 -> 35 x int(50 * 35 / 37) = 35 x 47, aspect kept; (64, 30) is kept as it is
    assert capped[0].shape == (35, 47, 3) and capped.original_size(0) == (37, 50)
    with Image.open(root / items[0].relpath) as image:
        np.testing.assert_array_equal(capped[0], np.asarray(image.convert("RGB").resize((47, 35), Image.BICUBIC)))
    np.testing.assert_array_equal(capped[3], _decoded(root / items[3].relpath))
    assert capped.stored_sizes.tolist() == [[35, 47], [47, 35], [35, 35], [30, 64], [64, 30], [33, 45], [45, 33]]


def test_automatic_cap_keeps_the_smallest_crop_at_the_input_size():
    assert default_train_short_side(224) == 915 and default_train_short_side(32) == 131
    # the smallest crop (area 0.08 at aspect 3/4) of a square image with this side has >= 224 px each way,
    # one pixel less would not
    for size in (224, 336, 32):
        cap = default_train_short_side(size)
        assert math.sqrt(0.08 * cap * cap * 3 / 4) >= size > math.sqrt(0.08 * (cap - 1) ** 2 * 3 / 4)


def test_cap_zero_keeps_large_originals_and_the_default_cap_resizes_them(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    smooth_image(1, 300, 200).save(root / "big.jpg")
    items = [Item("big.jpg", 0, "a")]
    original = build_store(items, root, tmp_path / "original", "train", 32, train_short_side=0)
    np.testing.assert_array_equal(original[0], _decoded(root / "big.jpg"))
    capped = build_store(items, root, tmp_path / "capped", "train", 32)
    assert capped[0].shape == (131, 196, 3) and capped.original_size(0) == (200, 300)
    with Image.open(root / "big.jpg") as image:
        np.testing.assert_array_equal(capped[0], resize_shorter_side_to_cap(image, 131))
    assert (
        json.loads((tmp_path / "original" / "index.json").read_text())["preprocess"]["resize_shorter_side_above"]
        is None
    )


def test_store_settings_are_checked(images, tmp_path):
    root, items = images
    with pytest.raises(UserError, match="train_short_side must be 0 .* at least image_size 32, got 16"):
        build_store(items, root, tmp_path / "store", "train", 32, train_short_side=16)
    with pytest.raises(UserError, match="non-negative integer"):
        build_store(items, root, tmp_path / "store", "train", 32, train_short_side=-1)
    with pytest.raises(UserError, match="training stores only"):
        build_store(items, root, tmp_path / "store", "test", 32, train_short_side=0)
    with pytest.raises(UserError, match="unknown store mode 'eval'"):
        build_store(items, root, tmp_path / "store", "eval", 32)
    assert not (tmp_path / "store").exists()


def test_reading_does_no_decoding_and_survives_pickling(images, tmp_path, monkeypatch):
    root, items = images
    built = build_store(items, root, tmp_path / "store", "train", 32, train_short_side=35)
    pixels = [built[i] for i in range(len(built))]
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the store decoded an image"))
    store = ImageStore(tmp_path / "store")
    for i in range(len(store)):
        np.testing.assert_array_equal(store[i], pixels[i])
    copy = pickle.loads(pickle.dumps(store))  # what DataLoader workers do
    np.testing.assert_array_equal(copy[6], pixels[6])
    assert copy.original_size(0) == (37, 50) and copy[0].shape == (35, 47, 3)
    assert not store[0].flags.writeable  # a view of the read-only memory map
    with pytest.raises(IndexError):
        store[7]


def test_worker_count_does_not_change_the_store(images, tmp_path):
    root, items = images
    one = build_store(items, root, tmp_path / "one", "test", 32, workers=1)
    three = build_store(items, root, tmp_path / "three", "test", 32, workers=3)
    for i in range(len(items)):
        np.testing.assert_array_equal(one[i], three[i])


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_or_truncated_image_stops_the_build(images, tmp_path):
    root, items = images
    _truncate(root / items[3].relpath)
    with pytest.raises(UserError, match=rf"{items[3].relpath}.*cannot be decoded"):
        build_store(items, root, tmp_path / "store", "test", 32)
    assert not (tmp_path / "store").exists()
    (root / items[3].relpath).write_bytes(b"this is not an image")
    with pytest.raises(UserError, match=rf"{items[3].relpath}.*cannot be decoded"):
        build_store(items, root, tmp_path / "store", "test", 32)


def test_skip_bad_counts_and_logs(images, tmp_path, caplog):
    root, items = images
    _truncate(root / items[1].relpath)
    (root / items[4].relpath).write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING, logger="prompt_ot.data.store"):
        store = build_store(items, root, tmp_path / "store", "test", 32, skip_bad=True)
    kept = [it for k, it in enumerate(items) if k not in (1, 4)]
    assert len(store) == 5 and store.relpaths == [it.relpath for it in kept]
    assert store.labels.tolist() == [it.label for it in kept]
    assert store.skipped == [items[1].relpath, items[4].relpath]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("skipped 2 bad images: ")
    assert items[1].relpath in lines[0] and items[4].relpath in lines[0]
    with Image.open(root / kept[-1].relpath) as image:
        np.testing.assert_array_equal(store[4], resize_center_crop(image, 32))
    assert store.original_size(4) == (SIZES[6][1], SIZES[6][0])


def test_a_store_of_only_bad_images_is_empty(images, tmp_path):
    root, items = images
    (root / items[0].relpath).write_bytes(b"not an image")
    store = build_store(items[:1], root, tmp_path / "store", "train", 32, skip_bad=True)
    assert len(store) == 0 and store.skipped == [items[0].relpath]
    assert len(ImageStore(tmp_path / "store")) == 0


def test_missing_file_and_bad_label_name_the_file(images, tmp_path):
    root, items = images
    (root / items[5].relpath).unlink()
    with pytest.raises(UserError, match=rf"{items[5].relpath} does not exist"):
        build_store(items, root, tmp_path / "store", "test", 32, skip_bad=True)
    good = items[:5]
    bad_label = good + [Item(good[0].relpath, 3, "extra")]
    with pytest.raises(UserError, match=rf"{good[0].relpath} has label 3.*0\.\.2 \(3 classes given\)"):
        build_store(bad_label, root, tmp_path / "store", "test", 32, classnames=["a", "b", "c"])
    with pytest.raises(UserError, match="has label -1"):
        build_store([Item(good[0].relpath, -1, "x")], root, tmp_path / "store", "test", 32)
    assert not (tmp_path / "store").exists()


class Killed(BaseException):
    """Stands in for the process being killed mid-build."""


def _kill_after(monkeypatch, n: int):
    real = store_module._decode
    calls = []

    def decode(path, *args):
        calls.append(path)
        if len(calls) > n:
            raise Killed
        return real(path, *args)

    monkeypatch.setattr(store_module, "_decode", decode)


def test_killed_build_leaves_no_complete_looking_store(images, tmp_path, monkeypatch):
    root, items = images
    _kill_after(monkeypatch, 4)
    with pytest.raises(Killed):
        build_store(items, root, tmp_path / "out" / "store", "test", 32, workers=1)
    assert list((tmp_path / "out").iterdir()) == []  # neither the store nor its temporary folder
    with pytest.raises(UserError, match="no complete image store"):
        ImageStore(tmp_path / "out" / "store")


def test_killed_rebuild_keeps_the_old_store(images, tmp_path, monkeypatch):
    root, items = images
    old = build_store(items[:4], root, tmp_path / "store", "test", 32)
    _kill_after(monkeypatch, 2)
    with pytest.raises(Killed):
        build_store(items, root, tmp_path / "store", "test", 32, workers=1)
    assert len(ImageStore(tmp_path / "store")) == len(old) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "store"]


def test_same_build_is_reused_and_a_different_one_replaces_it(images, tmp_path, monkeypatch):
    root, items = images
    build_store(items, root, tmp_path / "store", "test", 32)
    real = store_module._decode
    monkeypatch.setattr(store_module, "_decode", lambda *a: pytest.fail("rebuilt an up-to-date store"))
    assert len(build_store(items, root, tmp_path / "store", "test", 32)) == 7
    monkeypatch.setattr(store_module, "_decode", real)
    smaller = build_store(items[:3], root, tmp_path / "store", "test", 32)
    assert len(smaller) == 3 and len(ImageStore(tmp_path / "store")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "store"]
    # a changed file (different size) is noticed
    smooth_image(99, 80, 60).save(root / items[0].relpath, quality=50)
    with Image.open(root / items[0].relpath) as image:
        expected = resize_center_crop(image, 32)
    np.testing.assert_array_equal(build_store(items[:3], root, tmp_path / "store", "test", 32)[0], expected)


def test_damaged_store_is_a_user_error(images, tmp_path):
    root, items = images
    build_store(items, root, tmp_path / "store", "test", 32)
    pixels, index_path = tmp_path / "store" / "pixels.u8", tmp_path / "store" / "index.json"
    whole = pixels.read_bytes()
    pixels.write_bytes(whole[:-100])
    with pytest.raises(UserError, match=r"pixels.u8 has 21404 bytes, the index lists 21504; rebuild"):
        ImageStore(tmp_path / "store")
    pixels.unlink()
    with pytest.raises(UserError, match="pixels.u8 is missing"):
        ImageStore(tmp_path / "store")
    pixels.write_bytes(whole)
    index = json.loads(index_path.read_text())
    index["offsets"][3] += 1
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="index.json is incomplete or inconsistent"):
        ImageStore(tmp_path / "store")
    del index["original_sizes"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="index.json is incomplete or inconsistent.*original_sizes"):
        ImageStore(tmp_path / "store")
    index_path.write_text("{")
    with pytest.raises(UserError, match="index.json is not valid JSON"):
        ImageStore(tmp_path / "store")
    # a damaged store is rebuilt by the next build
    assert len(build_store(items, root, tmp_path / "store", "test", 32)) == 7


def _old_format_store(folder, count: int = 2, side: int = 40):
    """A store as format version 1 wrote it: index.json and a shard of square images."""
    folder.mkdir()
    np.save(folder / "shard_00000.npy", np.zeros((count, side, side, 3), np.uint8))
    index = {
        "format_version": 1,
        "mode": "train",
        "image_size": 32,
        "stored_size": side,
        "fingerprint": "x",
        "shard_size": 512,
        "shards": [{"file": "shard_00000.npy", "count": count}],
        "num_images": count,
        "skipped": [],
        "labels": [0] * count,
        "relpaths": [f"img_{k}.jpg" for k in range(count)],
        "classnames": None,
    }
    (folder / "index.json").write_text(json.dumps(index))


def test_an_old_format_store_is_refused_and_rebuilt(images, tmp_path):
    root, items = images
    _old_format_store(tmp_path / "store")
    with pytest.raises(UserError, match="format version 1 .*square training crops.*build the store again"):
        ImageStore(tmp_path / "store")
    store = build_store(items, root, tmp_path / "store", "train", 32)
    assert len(store) == 7 and store[0].shape == (37, 50, 3)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["index.json", "pixels.u8"]
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    index["format_version"] = 3
    (tmp_path / "store" / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="another format version than 2"):
        ImageStore(tmp_path / "store")
