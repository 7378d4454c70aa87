"""Oxford-IIIT Pets (Parkhi et al., 2012): 37 cat and dog breeds. Split: CoOp's ``split_zhou_OxfordPets.json``."""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

_VGG = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
_THOR = "https://thor.robots.ox.ac.uk/datasets/pets/"

DATASET = DatasetSpec(
    name="oxford_pets",
    folder="oxford_pets",
    template="a photo of a {}, a type of pet.",
    sources=(
        SourceFile(
            url=_VGG + "images.tar.gz",
            filename="images.tar.gz",
            mirrors=(_THOR + "images.tar.gz",),
            sha256="67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
        ),
        SourceFile(
            url=_VGG + "annotations.tar.gz",
            filename="annotations.tar.gz",
            mirrors=(_THOR + "annotations.tar.gz",),
            sha256="52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
        ),
        google_drive("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs", "split_zhou_OxfordPets.json"),
    ),
    image_dir="images",
    split_file="split_zhou_OxfordPets.json",
    notes="layout: oxford_pets/{images,annotations}/ + split_zhou_OxfordPets.json",
    extra={
        "num_classes": 37,
        "split_sizes": (2944, 736, 3669),
        "homepage": "https://www.robots.ox.ac.uk/~vgg/data/pets/",
    },
)
