"""Describable Textures (Cimpoi et al., 2014): 47 texture attributes.

Split: CoOp's ``split_zhou_DescribableTextures.json``.
"""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="dtd",
    folder="dtd",
    template="{} texture.",
    sources=(
        SourceFile(
            url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            filename="dtd-r1.0.1.tar.gz",
            mirrors=("https://thor.robots.ox.ac.uk/dtd/dtd-r1.0.1.tar.gz",),
            sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
            member_prefix="dtd/",
        ),
        google_drive("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x", "split_zhou_DescribableTextures.json"),
    ),
    image_dir="images",
    split_file="split_zhou_DescribableTextures.json",
    notes="layout: dtd/{images,imdb,labels}/ + split_zhou_DescribableTextures.json",
    extra={
        "num_classes": 47,
        "split_sizes": (2820, 1128, 1692),
        "homepage": "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
    },
)
