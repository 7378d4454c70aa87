"""SUN397 (Xiao et al., 2010): 397 scene categories. Split: CoOp's ``split_zhou_SUN397.json``."""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="sun397",
    folder="sun397",
    template="a photo of a {}.",
    sources=(
        SourceFile(
            url="http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
            filename="SUN397.tar.gz",
            sha256="f404130965a7ad77bed5ececc71e720ab50f3cc1e1bb257257610d38f3b928ec",
        ),
        google_drive("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", "split_zhou_SUN397.json"),
    ),
    image_dir="SUN397",
    split_file="split_zhou_SUN397.json",
    notes="layout: sun397/SUN397/<letter>/<category>/... + split_zhou_SUN397.json (about 37 GB unpacked)",
    extra={
        "num_classes": 397,
        "split_sizes": (15880, 3970, 19850),
        "homepage": "https://vision.princeton.edu/projects/2010/SUN/",
    },
)
