"""FGVC-Aircraft 2013b (Maji et al., 2013): 100 aircraft variants, with the dataset's official split.

The split comes from the archive's own files, as in CoOp: ``variants.txt`` lists the class names in
label order, ``images_variant_{train,val,test}.txt`` hold lines ``<image id> <variant name>``.
"""

from pathlib import Path

from prompt_ot.data.download import SourceFile
from prompt_ot.data.registry import DatasetSpec, Item, Split
from prompt_ot.errors import UserError


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"FGVC-Aircraft split file {path} is missing; run 'python -m prompt_ot download fgvc_aircraft'")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_split(folder: Path) -> Split:
    """Items from the official variant split files; paths relative to ``images/``."""
    classnames = _lines(folder / "variants.txt")
    label_of = {name: label for label, name in enumerate(classnames)}
    split: Split = {}
    for key in ("train", "val", "test"):
        path = folder / f"images_variant_{key}.txt"
        items = []
        for number, line in enumerate(_lines(path), start=1):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise UserError(
                    f"{path} line {number}: variant {variant!r} is not in variants.txt; the files do not match"
                )
            items.append(Item(f"{image_id}.jpg", label_of[variant], variant))
        split[key] = items
    return split


DATASET = DatasetSpec(
    name="fgvc_aircraft",
    folder="fgvc_aircraft",
    template="a photo of a {}, a type of aircraft.",
    sources=(
        SourceFile(
            url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
            filename="fgvc-aircraft-2013b.tar.gz",
            member_prefix="fgvc-aircraft-2013b/data/",
        ),
    ),
    image_dir="images",
    load_split_fn=load_split,
    notes="layout: fgvc_aircraft/images/ + variants.txt + images_variant_{train,val,test}.txt "
    "(the archive's data/ folder)",
    extra={
        "num_classes": 100,
        "split_sizes": (3334, 3333, 3333),
        "homepage": "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
    },
)
