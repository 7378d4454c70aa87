"""Oxford Flowers102 (Nilsback & Zisserman, 2008): 102 flower species.

Split: CoOp's ``split_zhou_OxfordFlowers.json``.
"""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

_VGG = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_THOR = "https://thor.robots.ox.ac.uk/flowers/102/"

DATASET = DatasetSpec(
    name="flowers102",
    folder="oxford_flowers",
    template="a photo of a {}, a type of flower.",
    sources=(
        # 102flowers.tgz is left unpinned: its bytes have been reported to differ between fetches
        SourceFile(url=_VGG + "102flowers.tgz", filename="102flowers.tgz", mirrors=(_THOR + "102flowers.tgz",)),
        SourceFile(
            url=_VGG + "imagelabels.mat",
            filename="imagelabels.mat",
            mirrors=(_THOR + "imagelabels.mat",),
            sha256="4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d",
            extract=False,
        ),
        google_drive("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT", "split_zhou_OxfordFlowers.json"),
    ),
    image_dir="jpg",
    split_file="split_zhou_OxfordFlowers.json",
    notes="layout: oxford_flowers/jpg/ + imagelabels.mat + split_zhou_OxfordFlowers.json "
    "(CoOp's cat_to_name.json is not needed: the split holds the class names)",
    extra={
        "num_classes": 102,
        "split_sizes": (4093, 1633, 2463),
        "homepage": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    },
)
