"""SUN397 (Xiao et al., 2010): 397 scene categories. Split: CoOp's ``split_zhou_SUN397.json``.

The original archive's URL (vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz) answers 404 since 2025, and
so do the other addresses it was known under (its HTTPS form, which redirects to cs.princeton.edu, and MIT CSAIL's
``SUN1old`` copy; see pytorch/vision#9348 and KaiyangZhou/CoOp#90). No public host of the same archive with a
direct link is known, so it has no mirror here: the URL stays first (should it come back) and, when it fails,
``MANUAL_STEPS`` say where copies are reported and how ``download sun397 --from PATH`` lays one out.
"""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

ARCHIVE_SHA256 = "f404130965a7ad77bed5ececc71e720ab50f3cc1e1bb257257610d38f3b928ec"

MANUAL_STEPS = """
SUN397's archive ({archive}, 37 GB) is no longer served at its original address, and no public mirror
of it is known. To put SUN397 in place from a copy obtained elsewhere:
  1. Get a copy of the images, e.g. one your group already holds, OpenDataLab's SUN397 page
     (https://opendatalab.com/OpenDataLab/SUN397, folder raw/), or an upload on Kaggle (search for SUN397).
     The images must keep their original paths <letter>/<category>/sun_<id>.jpg (a/abbey/...,
     b/badlands/...): a copy re-sorted into train/ and test/ folders (as some uploads are) must be merged
     back first.
  2. If you have the original archive, compare its checksum: sha256sum {archive} must print
       {sha256}
     (a repacked archive or a folder has another checksum, or none: its contents are checked instead).
  3. Lay it out, from the archive (zip or tar.*) or from the unpacked folder (its top-level folder may be
     named differently or nested deeper; a folder's files are hard-linked where possible, else copied):
       python -m prompt_ot download sun397 --from PATH --root {root}
     This puts the images in {folder}/SUN397, fetches CoOp's split file split_zhou_SUN397.json (or takes
     it from PATH), checks every image it lists and marks the folder complete.
"""

DATASET = DatasetSpec(
    name="sun397",
    folder="sun397",
    template="a photo of a {}.",
    sources=(
        SourceFile(
            url="http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
            filename="SUN397.tar.gz",
            sha256=ARCHIVE_SHA256,
        ),
        google_drive("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", "split_zhou_SUN397.json"),
    ),
    image_dir="SUN397",
    split_file="split_zhou_SUN397.json",
    manual_steps=MANUAL_STEPS,
    notes="layout: sun397/SUN397/<letter>/<category>/... + split_zhou_SUN397.json (about 37 GB unpacked)",
    extra={
        "num_classes": 397,
        "split_sizes": (15880, 3970, 19850),
        "homepage": "https://vision.princeton.edu/projects/2010/SUN/",
    },
)
