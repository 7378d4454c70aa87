"""The clip art demo dataset: Openclipart's PNGs (Debian's openclipart-png) in the benchmark layout."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prompt_ot.cli import main
from prompt_ot.data.datasets import clipart
from prompt_ot.data.demo import class_folder, is_complete, prepare_demo
from prompt_ot.data.registry import classnames_of, dataset_names, dataset_spec, read_coop_split
from prompt_ot.errors import UserError

CLASSES = [
    ("mammal", "animals/mammals"),
    ("fruit", "food/fruit"),
    ("dessert", "food/desserts"),
    ("piece of clothing", "people/clothing"),
    ("vehicle", "transportation/vehicles"),
    ("drink", "food/beverages"),
    ("bird", "animals/birds"),
    ("insect", "animals/bugs"),
    ("house", "buildings/homes"),
    ("flower", "plants/flowers"),
]
CLASSNAMES = [name for name, _ in CLASSES]
SIZES = [20 + 2 * label for label in range(10)]  # distinct usable images per class in the fake tree: 20..38
REAL_COUNTS = {"train": 297, "val": 60, "test": 240}  # the real package's split sizes, also written in the notes
REAL_PER_CLASS = [117, 82, 62, 60, 59, 50, 48, 49, 38, 32]
REAL_DIR = clipart.SOURCE_DIR


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 4) uint8 RGBA array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def stem(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def half_transparent_half_red() -> bytes:
    """64x64: the left half fully transparent (black underneath), the right half opaque red."""
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[:, 32:] = (255, 0, 0, 255)
    return png(pixels)


def opaque(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[...] = (*colour, 255)
    return png(pixels)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(source: Path) -> dict:
    """A fake /usr/share/openclipart/png: SIZES[label] distinct usable images per class, plus a nested folder, a
    symlink and a byte-identical copy (counted once), two images found in two classes (dropped) and a corrupt file.
    Returns the bytes of the special images."""
    rng = np.random.default_rng(7)
    special = {
        "transparent_red": half_transparent_half_red(),  # house
        "wide": opaque(40, 20, (0, 0, 255)),  # vehicle
        "tall": opaque(10, 30, (0, 160, 0)),  # vehicle
    }
    stems: dict[str, set[str]] = {}
    for label, (classname, sub) in enumerate(CLASSES):
        folder = source / sub
        count = SIZES[label]
        blobs = []
        if classname == "house":
            blobs.append(special["transparent_red"])
        if classname == "vehicle":
            blobs += [special["wide"], special["tall"]]
        while len(blobs) < count:
            height, width = rng.integers(3, 9, size=2)
            blobs.append(png(rng.integers(0, 256, size=(height, width, 4))))
        for k, data in enumerate(blobs):
            nested = classname == "mammal" and k % 3 == 0  # some below animals/mammals/bears/, some deeper
            where = folder / "bears" / ("cubs" if k % 2 else "") if nested else folder
            write(where / f"{classname.replace(' ', '_')}_{k:02d}.png", data)
        stems[classname] = {stem(data) for data in blobs}
    mammals = source / "animals/mammals"
    os.symlink("bears/mammal_00.png", mammals / "link_to_a_bear.png")  # same file under a second name
    fruit = source / "food/fruit"
    write(fruit / "zz_copy_of_fruit_03.png", (fruit / "fruit_03.png").read_bytes())  # same bytes, another file
    # in two classes: one by a symlink across folders, one by a copy; both dropped from both classes
    special["ambiguous_link"] = write(source / "food/desserts/cake_and_drink.png", opaque(5, 5, (9, 9, 9)))
    os.symlink("../desserts/cake_and_drink.png", source / "food/beverages/drink_or_cake.png")
    special["ambiguous_copy"] = write(source / "animals/birds/bird_or_bug.png", opaque(6, 4, (1, 2, 3)))
    write(source / "animals/bugs/bug_or_bird.png", special["ambiguous_copy"].read_bytes())
    write(source / "animals/bugs/broken.png", b"\x89PNG\r\n\x1a\nnot really a png")
    (source / "animals/bugs/readme.txt").write_text("not an image")
    special["ambiguous_link"] = special["ambiguous_link"].read_bytes()
    special["ambiguous_copy"] = special["ambiguous_copy"].read_bytes()
    special["stems"] = stems
    return special


@pytest.fixture
def tree(tmp_path, monkeypatch):
    source = tmp_path / "openclipart" / "png"
    special = make_tree(source)
    monkeypatch.setattr(clipart, "SOURCE_DIR", source)
    return special


def build(root: Path):
    spec = dataset_spec("clipart")
    spec.prepare_fn(spec.dataset_dir(root))
    return spec, spec.load_split(root)


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.format == "PNG" and image.size == (64, 64)
        return np.asarray(image)


def expected_sizes(n: int) -> dict[str, int]:
    test, val = round(0.4 * n), max(1, round(0.1 * n))
    return {"train": n - test - val, "val": val, "test": test}


def test_clipart_is_registered():
    assert "clipart" in dataset_names("demo")
    spec = dataset_spec("clipart")
    assert spec.kind == "demo" and spec.prepare_fn is not None
    assert (spec.folder, spec.split_file, spec.image_dir) == ("clipart", "split_zhou_Clipart.json", "images")
    assert spec.template.count("{}") == 1 and "clip art" in spec.template
    assert clipart.CLASSNAMES == CLASSNAMES and list(clipart.CLASS_FOLDERS.items()) == CLASSES


def test_classes_labels_and_dedup(tmp_path, tree, caplog):
    caplog.set_level(logging.INFO, logger=clipart.__name__)
    spec, split = build(tmp_path / "data")
    assert classnames_of(split) == CLASSNAMES
    items = [it for part in split.values() for it in part]
    for it in items:
        assert it.classname == CLASSNAMES[it.label] and it.relpath.startswith(class_folder(it.classname) + "/")
    # every distinct image once: the nested ones counted, the symlink and the copy not again, the ambiguous dropped
    assert Counter(it.label for it in items) == {label: n for label, n in enumerate(SIZES)}
    for classname, stems in tree["stems"].items():
        assert {it.relpath for it in items if it.classname == classname} == {
            f"{class_folder(classname)}/{s}.png" for s in stems
        }
    all_stems = {it.relpath.rsplit("/", 1)[1].removesuffix(".png") for it in items}
    assert len(all_stems) == len(items) == sum(SIZES)
    assert stem(tree["ambiguous_link"]) not in all_stems and stem(tree["ambiguous_copy"]) not in all_stems
    on_disk = sorted(
        p.relative_to(spec.image_root(tmp_path / "data")).as_posix()
        for p in spec.image_root(tmp_path / "data").rglob("*.png")
    )
    assert on_disk == sorted(it.relpath for it in items)
    assert (spec.image_root(tmp_path / "data") / "piece_of_clothing").is_dir()
    # the corrupt file: skipped, one warning that counts it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 PNG file" in warnings[0] and "broken.png" in warnings[0]


def test_pixels_on_white_fitted_into_64(tmp_path, tree):
    spec, _ = build(tmp_path / "data")
    images = spec.image_root(tmp_path / "data")
    red = pixels_of(images / "house" / f"{stem(tree['transparent_red'])}.png")
    assert (red[:, :32] == 255).all(), "a fully transparent pixel is white"
    assert (red[:, 32:] == (255, 0, 0)).all(), "an opaque red pixel stays red"
    wide = pixels_of(images / "vehicle" / f"{stem(tree['wide'])}.png").astype(int)  # 40x20 -> 64x32, centred
    assert (wide[:16] == 255).all() and (wide[48:] == 255).all()
    assert np.abs(wide[17:47, 1:63] - (0, 0, 255)).max() <= 8
    tall = pixels_of(images / "vehicle" / f"{stem(tree['tall'])}.png").astype(int)  # 10x30 -> 21x64, centred
    assert (tall[:, :21] == 255).all() and (tall[:, 42:] == 255).all()
    assert np.abs(tall[1:63, 22:42] - (0, 160, 0)).max() <= 8
    for path in list(images.rglob("*.png"))[::25]:
        pixels_of(path)  # every image 64x64 RGB


def test_an_image_above_pillows_bomb_limit_is_skipped(tmp_path, tree, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # only the 64x64 house is above it
    _, split = build(tmp_path / "data")
    houses = {it.relpath for items in split.values() for it in items if it.classname == "house"}
    assert len(houses) == SIZES[8] - 1 and f"house/{stem(tree['transparent_red'])}.png" not in houses
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 PNG file" in warnings[0] and "house_00.png" in warnings[0]


def test_split_sizes_order_and_disjointness(tmp_path, tree):
    _, split = build(tmp_path / "data")
    for label, n in enumerate(SIZES):
        counts = {part: sum(it.label == label for it in items) for part, items in split.items()}
        assert counts == expected_sizes(n), CLASSNAMES[label]
        # by content hash: the first 40% are the test split, the next 10% validation, the rest training
        ordered = sorted(it.relpath for items in split.values() for it in items if it.label == label)
        assert [it.relpath for it in split["test"] if it.label == label] == ordered[: counts["test"]]
        assert [it.relpath for it in split["val"] if it.label == label] == ordered[
            counts["test"] : counts["test"] + counts["val"]
        ]
    parts = {part: {it.relpath for it in items} for part, items in split.items()}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    assert clipart.split_sizes(118) == (59, 12, 47) and clipart.split_sizes(33) == (17, 3, 13)
    assert clipart.split_sizes(25) == (12, 3, 10) and clipart.split_sizes(3) == (1, 1, 1)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_builds_are_deterministic_and_a_second_prepare_does_nothing(tmp_path, tree):
    first, second = tmp_path / "a" / "clipart", tmp_path / "b" / "clipart"
    clipart.prepare(first)
    clipart.prepare(second)
    assert snapshot(first) == snapshot(second)
    assert sorted(p.name for p in first.iterdir()) == ["images", clipart.SPLIT_FILE]
    assert is_complete(first, clipart.SPLIT_FILE)
    split_file = first / clipart.SPLIT_FILE
    some_png = next((first / "images" / "insect").iterdir())
    stamps = (split_file.stat().st_mtime_ns, some_png.stat().st_mtime_ns)
    assert not prepare_demo(first, clipart.SPLIT_FILE, lambda: pytest.fail("read the source again"))
    clipart.prepare(first)
    assert (split_file.stat().st_mtime_ns, some_png.stat().st_mtime_ns) == stamps


def test_missing_package_is_one_clear_error(tmp_path, monkeypatch, capsys):
    absent = tmp_path / "no" / "openclipart" / "png"
    monkeypatch.setattr(clipart, "SOURCE_DIR", absent)
    with pytest.raises(UserError, match="apt-get install openclipart-png") as info:
        clipart.prepare(tmp_path / "clipart")
    assert str(absent) in str(info.value)
    assert not (tmp_path / "clipart" / clipart.SPLIT_FILE).exists()
    root = tmp_path / "data"
    root.mkdir()
    capsys.readouterr()
    rc = main(["download", "clipart", "--root", str(root)])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(absent) in errors[0] and "apt-get install openclipart-png" in errors[0]


def test_download_through_the_cli(tmp_path, tree, capsys):
    root = tmp_path / "data"
    root.mkdir()
    assert main(["download", "clipart", "--root", str(root)]) == 0
    split = read_coop_split(root / "clipart" / clipart.SPLIT_FILE)
    assert sum(len(items) for items in split.values()) == sum(SIZES)
    assert main(["download", "clipart", "--root", str(root)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_a_class_with_too_few_images_is_refused(tmp_path, tree):
    flowers = sorted((clipart.SOURCE_DIR / "plants/flowers").iterdir())
    for path in flowers[clipart.MIN_IMAGES - 1 :]:
        path.unlink()
    with pytest.raises(UserError, match=r"'flower' .*plants/flowers.* has 19 usable images, fewer than 20"):
        clipart.prepare(tmp_path / "clipart")
    (clipart.SOURCE_DIR / "buildings/homes").rename(clipart.SOURCE_DIR / "buildings/houses")
    with pytest.raises(UserError, match=r"buildings/homes does not exist.*'house'.*apt-get install openclipart-png"):
        clipart.prepare(tmp_path / "clipart")


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"Debian's openclipart-png is not installed ({REAL_DIR})")
def test_the_real_package(tmp_path, monkeypatch):
    monkeypatch.setattr(clipart, "SOURCE_DIR", REAL_DIR)
    spec, split = build(tmp_path)
    assert classnames_of(split) == CLASSNAMES
    assert {part: len(items) for part, items in split.items()} == REAL_COUNTS
    notes = spec.notes.replace(",", "")
    assert f"{REAL_COUNTS['train']} train / {REAL_COUNTS['val']} val / {REAL_COUNTS['test']} test" in notes
    for label in range(10):
        n = sum(it.label == label for items in split.values() for it in items)
        assert n == REAL_PER_CLASS[label] and f"{CLASSNAMES[label]} {n}" in notes
        assert {p: sum(it.label == label for it in split[p]) for p in split} == expected_sizes(n)
