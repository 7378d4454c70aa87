"""ImageNet-Sketch (Wang et al., 2019): 50,889 sketches of ImageNet's 1000 classes. Test split only.

The archive's ``sketch/`` folder is unpacked as ``images/``, CoOp's layout.
"""

from pathlib import Path

from prompt_ot.data.download import SourceFile
from prompt_ot.data.imagenet_classes import IMAGENET_WNIDS, class_folder_items, imagenet_classnames
from prompt_ot.data.registry import DatasetSpec, Split


def load_split(folder: Path) -> Split:
    test = class_folder_items("imagenet_sketch", folder / "images", "", IMAGENET_WNIDS, imagenet_classnames())
    return {"train": [], "val": [], "test": test}


DATASET = DatasetSpec(
    name="imagenet_sketch",
    folder="imagenet-sketch",
    template="a photo of a {}.",
    sources=(
        SourceFile(
            url="https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
            filename="ImageNet-Sketch.zip",
            mirrors=(
                "https://huggingface.co/datasets/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                # the authors' copy (github.com/HaohanWang/ImageNet-Sketch)
                "https://drive.usercontent.google.com/download?id=1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA&export=download&confirm=t",
            ),
            member_prefix="sketch/",
            dest="images/",
        ),
    ),
    image_dir="images",
    load_split_fn=load_split,
    classnames_fn=imagenet_classnames,
    kind="target_only",
    notes="layout: imagenet-sketch/images/<wnid>/*.JPEG",
    extra={
        "num_classes": 1000,
        "split_sizes": (0, 0, 50889),
        "homepage": "https://github.com/HaohanWang/ImageNet-Sketch",
    },
)
