"""ImageNet-V2 matched-frequency (Recht et al., 2019): 10,000 new test images of ImageNet's 1000 classes.

Its folders are named by label (``0`` .. ``999``), not by wnid. Test split only.
"""

from pathlib import Path

from prompt_ot.data.download import SourceFile
from prompt_ot.data.imagenet_classes import class_folder_items, imagenet_classnames
from prompt_ot.data.registry import DatasetSpec, Split

IMAGE_DIR = "imagenetv2-matched-frequency-format-val"


def load_split(folder: Path) -> Split:
    folders = [str(label) for label in range(1000)]
    test = class_folder_items("imagenet_v2", folder / IMAGE_DIR, "", folders, imagenet_classnames())
    return {"train": [], "val": [], "test": test}


DATASET = DatasetSpec(
    name="imagenet_v2",
    folder="imagenetv2",
    template="a photo of a {}.",
    sources=(
        SourceFile(
            url="https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
            filename="imagenetv2-matched-frequency.tar.gz",
            mirrors=("https://imagenetv2public.s3-us-west-2.amazonaws.com/imagenetv2-matched-frequency.tar.gz",),
        ),
    ),
    image_dir=IMAGE_DIR,
    load_split_fn=load_split,
    classnames_fn=imagenet_classnames,
    kind="target_only",
    notes="layout: imagenetv2/imagenetv2-matched-frequency-format-val/<label>/<hash>.jpeg",
    extra={"num_classes": 1000, "split_sizes": (0, 0, 10000), "homepage": "https://github.com/modestyachts/ImageNetV2"},
)
