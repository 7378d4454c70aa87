"""Food-101 (Bossard et al., 2014): 101 dishes. Split: CoOp's ``split_zhou_Food101.json``."""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="food101",
    folder="food-101",
    template="a photo of {}, a type of food.",
    sources=(
        SourceFile(
            url="http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
            filename="food-101.tar.gz",
            sha256="d97d15e438b7f4498f96086a4f7e2fa42a32f2712e87d3295441b2b6314053a4",
            member_prefix="food-101/",
        ),
        google_drive("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl", "split_zhou_Food101.json"),
    ),
    image_dir="images",
    split_file="split_zhou_Food101.json",
    notes="layout: food-101/{images,meta}/ + split_zhou_Food101.json",
    extra={
        "num_classes": 101,
        "split_sizes": (50500, 20200, 30300),
        "homepage": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
    },
)
