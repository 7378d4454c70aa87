"""ImageNet-1k (ILSVRC 2012): 1000 classes; the train set is the training pool and the val set the test set.

ImageNet's licence asks every user to register, so there is no automatic download: ``manual_steps``
says how to lay the official archives out as CoOp does (``images/{train,val}/<wnid>/``). Class names
are CLIP's (open_clip's bundled list, the same as CoOp's ``classnames.txt``).
"""

from pathlib import Path

from prompt_ot.data.imagenet_classes import IMAGENET_WNIDS, class_folder_items, imagenet_classnames
from prompt_ot.data.registry import DatasetSpec, Split

MANUAL_STEPS = """
ImageNet's licence requires each user to register at https://image-net.org and accept its terms, so
prompt-ot cannot fetch it. To put it in place:
  1. Log in at https://image-net.org/challenges/LSVRC/2012/2012-downloads.php and download
     ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz into {folder}
  2. Sort them into one folder per class (uses torchvision; needs about 150 GB free; the archives
     can be deleted afterwards):
       python -c "from torchvision.datasets import imagenet as t; r='{folder}'; t.parse_devkit_archive(r); t.parse_train_archive(r, folder='images/train'); t.parse_val_archive(r, folder='images/val')"
     The result must be
       {folder}/images/train/n01440764/n01440764_10026.JPEG ...    (1,000 folders, 1,281,167 images)
       {folder}/images/val/n01440764/ILSVRC2012_val_00000293.JPEG ... (1,000 folders, 50,000 images)
     If you already hold ImageNet in that form elsewhere, link it instead:
       mkdir -p {folder}/images && ln -s /path/to/train {folder}/images/train && ln -s /path/to/val {folder}/images/val
  3. Check the folder: python -m prompt_ot download imagenet --root {root} --check
No classnames.txt is needed: the class names come with open_clip.
"""


def load_split(folder: Path) -> Split:
    """Train = ``images/train``, test = ``images/val`` (as CoOp); no separate val split."""
    names = imagenet_classnames()
    base = folder / "images"
    return {
        "train": class_folder_items("imagenet", base / "train", "train/", IMAGENET_WNIDS, names),
        "val": [],
        "test": class_folder_items("imagenet", base / "val", "val/", IMAGENET_WNIDS, names),
    }


DATASET = DatasetSpec(
    name="imagenet",
    folder="imagenet",
    template="a photo of a {}.",
    image_dir="images",
    manual_steps=MANUAL_STEPS,
    load_split_fn=load_split,
    classnames_fn=imagenet_classnames,
    notes="val is empty: CoOp evaluates on ImageNet's val set, used here as test",
    extra={"num_classes": 1000, "split_sizes": (1281167, 0, 50000), "homepage": "https://image-net.org"},
)
