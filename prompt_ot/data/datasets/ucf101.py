"""UCF101 (Soomro et al., 2012), as CoOp uses it: the middle frame of each video, 101 actions.

The frames come from CoOp's ``UCF-101-midframes.zip``; split: CoOp's ``split_zhou_UCF101.json``.
"""

from prompt_ot.data.download import google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="ucf101",
    folder="ucf101",
    template="a photo of a person doing {}.",
    sources=(
        google_drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", "UCF-101-midframes.zip", extract=True),
        google_drive("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y", "split_zhou_UCF101.json"),
    ),
    image_dir="UCF-101-midframes",
    split_file="split_zhou_UCF101.json",
    notes="layout: ucf101/UCF-101-midframes/<Action>/<video>.jpg + split_zhou_UCF101.json",
    extra={
        "num_classes": 101,
        "split_sizes": (7639, 1898, 3783),
        "homepage": "https://www.crcv.ucf.edu/data/UCF101.php",
    },
)
