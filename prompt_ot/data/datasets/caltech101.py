"""Caltech101 (Fei-Fei et al., 2004): 100 object classes (CoOp drops the background class).

Caltech's data repository serves ``caltech-101.zip``, which holds ``101_ObjectCategories.tar.gz``;
that inner archive is unpacked in turn. Split: CoOp's ``split_zhou_Caltech101.json``.
"""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="caltech101",
    folder="caltech-101",
    template="a photo of a {}.",
    sources=(
        SourceFile(
            url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
            filename="caltech-101.zip",
            member_prefix="caltech-101/",
            inner_archives=("101_ObjectCategories.tar.gz",),
        ),
        google_drive("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN", "split_zhou_Caltech101.json"),
    ),
    image_dir="101_ObjectCategories",
    split_file="split_zhou_Caltech101.json",
    notes="layout: caltech-101/101_ObjectCategories/<class>/image_XXXX.jpg + split_zhou_Caltech101.json",
    extra={
        "num_classes": 100,
        "split_sizes": (4128, 1649, 2465),
        "homepage": "https://data.caltech.edu/records/mzrjq-6wc02",
    },
)
