"""Tiny fixture datasets in the exact on-disk layouts of CoOp's DATASETS.md, for tests.

``make_fixture(name, root)`` writes a few tiny PNG images (under the real file names and
extensions) and the split source of dataset ``name`` below ``root`` and returns the split that a
correct loader must read back. The layouts are written down here from CoOp's instructions, apart
from the dataset definitions, so that a definition with a wrong folder or file name fails the tests.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from prompt_ot.data.registry import Item, Split


class Layout(NamedTuple):
    folder: str  # under the data root
    image_dir: str  # under the folder; split paths are relative to it
    split_file: str | None


# CoOp's DATASETS.md
LAYOUTS: dict[str, Layout] = {
    "caltech101": Layout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": Layout("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": Layout("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "flowers102": Layout("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": Layout("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": Layout("fgvc_aircraft", "images", None),
    "sun397": Layout("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": Layout("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": Layout("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": Layout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "imagenet": Layout("imagenet", "images", None),
    "imagenet_v2": Layout("imagenetv2", "imagenetv2-matched-frequency-format-val", None),
    "imagenet_sketch": Layout("imagenet-sketch", "images", None),
    "imagenet_a": Layout("imagenet-adversarial", "imagenet-a", None),
    "imagenet_r": Layout("imagenet-rendition", "imagenet-r", None),
}

# (folder token used in file paths, class name in CoOp's split) for the first classes of each dataset
CLASSES: dict[str, list[tuple[str, str]]] = {
    "caltech101": [("accordion", "accordion"), ("airplanes", "airplane"), ("anchor", "anchor")],
    "oxford_pets": [("Abyssinian", "abyssinian"), ("american_bulldog", "american_bulldog"), ("Bengal", "bengal")],
    "stanford_cars": [("", "2012 AM General Hummer SUV"), ("", "2012 Acura RL Sedan"), ("", "2012 Acura TL Sedan")],
    "flowers102": [("", "pink primrose"), ("", "hard-leaved pocket orchid"), ("", "canterbury bells")],
    "food101": [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs"), ("baklava", "baklava")],
    "sun397": [
        ("a/abbey", "abbey"),
        ("a/airplane_cabin", "airplane cabin"),
        ("a/apartment_building/outdoor", "outdoor apartment building"),
    ],
    "dtd": [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided")],
    "eurosat": [
        ("AnnualCrop", "Annual Crop Land"),
        ("Forest", "Forest"),
        ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
        ("Highway", "Highway or Road"),
        ("Industrial", "Industrial Buildings"),
        ("Pasture", "Pasture Land"),
        ("PermanentCrop", "Permanent Crop Land"),
        ("Residential", "Residential Buildings"),
        ("River", "River"),
        ("SeaLake", "Sea or Lake"),
    ],
    "ucf101": [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Apply_Lipstick", "Apply_Lipstick"), ("Archery", "Archery")],
}
FGVC_VARIANTS = ["707-320", "727-200", "A300B4", "Cessna 172", "DHC-1", "F/A-18"]


@cache
def png_bytes(size: int = 4, colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    """A tiny real PNG image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _put(path: Path, data: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes() if data is None else data)


def _relpath(name: str, token: str, label: int, index: int, key: str) -> str:
    """A file name in the dataset's own naming scheme; ``index`` is unique within the dataset."""
    if name == "caltech101":
        return f"{token}/image_{index:04d}.jpg"
    if name == "oxford_pets":
        return f"{token}_{index}.jpg"
    if name == "stanford_cars":
        return f"cars_{'test' if key == 'test' else 'train'}/{index:05d}.jpg"
    if name == "flowers102":
        return f"image_{index:05d}.jpg"
    if name == "food101":
        return f"{token}/{100000 + index}.jpg"
    if name == "sun397":
        return f"{token}/sun_a{index:015d}.jpg"
    if name in ("dtd", "eurosat"):
        return f"{token}/{token}_{index}.jpg"
    if name == "ucf101":
        return f"{token}/v_{token.replace('_', '')}_g{index:02d}_c01.jpg"
    raise KeyError(name)


def _class_list(name: str, num_classes: int) -> list[tuple[str, str]]:
    known = CLASSES[name]
    extra = [(f"class_{i}" if known[0][0] else "", f"class {i}") for i in range(len(known), num_classes)]
    if name == "sun397":
        extra = [(f"z/class_{i}", f"class {i}") for i in range(len(known), num_classes)]
    return (known + extra)[:num_classes]


def make_coop_dataset(name: str, root: Path, *, num_classes: int = 3, per_split=(2, 1, 1)) -> Split:
    """Images plus a CoOp ``split_zhou_*.json`` for one of the split-file datasets."""
    layout = LAYOUTS[name]
    image_root = root / layout.folder / layout.image_dir
    split: Split = {"train": [], "val": [], "test": []}
    index = 1
    for label, (token, classname) in enumerate(_class_list(name, num_classes)):
        for key, count in zip(("train", "val", "test"), per_split):
            for _ in range(count):
                relpath = _relpath(name, token, label, index, key)
                index += 1
                _put(image_root / relpath)
                split[key].append(Item(relpath, label, classname))
    payload = {key: [[it.relpath, it.label, it.classname] for it in items] for key, items in split.items()}
    (root / layout.folder / layout.split_file).write_text(json.dumps(payload))
    return split


def make_fgvc_aircraft(root: Path, *, num_classes: int = 4, per_split=(2, 1, 1)) -> Split:
    """images/<id>.jpg, variants.txt and images_variant_{train,val,test}.txt as in the 2013b archive's data/."""
    folder = root / LAYOUTS["fgvc_aircraft"].folder
    variants = (FGVC_VARIANTS + [f"Variant {i}" for i in range(len(FGVC_VARIANTS), num_classes)])[:num_classes]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    split: Split = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for key, count in zip(("train", "val", "test"), per_split):
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(count):
                image_id += 1
                _put(folder / "images" / f"{image_id:07d}.jpg")
                lines.append(f"{image_id:07d} {variant}\n")
                split[key].append(Item(f"{image_id:07d}.jpg", label, variant))
        (folder / f"images_variant_{key}.txt").write_text("".join(lines))
    return split


def make_imagenet_family(name: str, root: Path, *, per_class: int = 1) -> Split:
    """One folder per class with ``per_class`` images, in the layout of ImageNet or one of its variants."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from prompt_ot.data.imagenet_classes import IMAGENET_WNIDS

    layout = LAYOUTS[name]
    image_root = root / layout.folder / layout.image_dir
    split: Split = {"train": [], "val": [], "test": []}
    if name == "imagenet_a" or name == "imagenet_r":
        module = __import__(f"prompt_ot.data.datasets.{name}", fromlist=["x"])
        wnids = getattr(module, f"IMAGENET_{name[-1].upper()}_WNIDS")
        (image_root / "README.txt").parent.mkdir(parents=True, exist_ok=True)
        (image_root / "README.txt").write_text("not a class folder\n")
    else:
        wnids = IMAGENET_WNIDS
    position = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    for label, wnid in enumerate(wnids):
        classname = IMAGENET_CLASSNAMES[position[wnid]]
        for k in range(per_class):
            if name == "imagenet":
                train = f"train/{wnid}/{wnid}_{k}.JPEG"
                test = f"val/{wnid}/ILSVRC2012_val_{label * per_class + k + 1:08d}.JPEG"
                _put(image_root / train)
                split["train"].append(Item(train, label, classname))
            elif name == "imagenet_v2":
                test = f"{label}/{k:040x}.jpeg"
            elif name == "imagenet_sketch":
                test = f"{wnid}/sketch_{k}.JPEG"
            else:
                test = f"{wnid}/{name[-1]}_{k}.jpg"
            _put(image_root / test)
            split["test"].append(Item(test, label, classname))
    _put(image_root / (split["test"][0].relpath.rsplit("/", 1)[0] + "/.DS_Store"), b"junk")  # hidden: ignored
    return split


def make_fixture(name: str, root: Path, **kwargs) -> Split:
    """Write dataset ``name``'s fixture below ``root``; return the split a correct loader reads back."""
    root = Path(root)
    if name in CLASSES:
        return make_coop_dataset(name, root, **kwargs)
    if name == "fgvc_aircraft":
        return make_fgvc_aircraft(root, **kwargs)
    return make_imagenet_family(name, root, **kwargs)


def archive_folder(source: Path, archive: Path, *, prefix: str = "") -> Path:
    """Pack every file under ``source`` into a zip or tar(.gz) named ``archive``, member names ``prefix + relpath``."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            for path in files:
                zf.write(path, prefix + path.relative_to(source).as_posix())
    else:
        mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
        with tarfile.open(archive, mode) as tar:
            for path in files:
                tar.add(path, prefix + path.relative_to(source).as_posix())
    return archive


# ---------------------------------------------------------------- photo-like images of several shapes

SIZES = [(50, 37), (37, 50), (41, 41), (64, 30), (30, 64), (45, 33), (33, 45)]  # (width, height)


def smooth_image(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: upsampled random colours plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 11, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_images(root, n: int = 7) -> list[Item]:
    """n images under root: JPEGs of several shapes, one grey PNG; labels cycle over 3 classes."""
    items = []
    for k in range(n):
        width, height = SIZES[k % len(SIZES)]
        image = smooth_image(k, width, height)
        label = k % 3
        if k == 2:
            relpath, image = f"c{label}/img_{k}.png", image.convert("L")
        else:
            relpath = f"c{label}/img_{k}.jpg"
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relpath)
        items.append(Item(relpath, label, f"class{label}"))
    return items


# ------------------------------------------------------------ Fashion-MNIST as Debian's dataset-fashion-mnist holds it


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip'ed IDX file of unsigned bytes (the MNIST format)."""
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_debian(
    directory: Path, *, train_per_class: int = 20, test_per_class: int = 2, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files of Debian's dataset-fashion-mnist in ``directory`` (point ``fashion_mnist.DEBIAN_DIR`` at it):
    random 28x28 images, ``train_per_class`` training images per class in shuffled order, ``test_per_class`` test
    images per class in class order. Returns {"train" | "t10k": (images, labels)} as written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": (
            rng.integers(0, 256, (10 * train_per_class, 28, 28)).astype(np.uint8),
            rng.permutation(np.repeat(np.arange(10), train_per_class)).astype(np.uint8),
        ),
        "t10k": (
            rng.integers(0, 256, (10 * test_per_class, 28, 28)).astype(np.uint8),
            np.repeat(np.arange(10), test_per_class).astype(np.uint8),
        ),
    }
    for part, (images, labels) in arrays.items():
        write_idx(directory / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{part}-labels-idx1-ubyte.gz", labels)
    return arrays
