"""EuroSAT RGB (Helber et al., 2019): 10 land-use classes of Sentinel-2 patches.

Split: CoOp's ``split_zhou_EuroSAT.json``.

CoOp's split names the classes in words ("Annual Crop Land", "Sea or Lake") and keeps the folder
names ("AnnualCrop/...") in the image paths.
"""

from prompt_ot.data.download import SourceFile, google_drive
from prompt_ot.data.registry import DatasetSpec

DATASET = DatasetSpec(
    name="eurosat",
    folder="eurosat",
    template="a centered satellite photo of {}.",
    sources=(
        SourceFile(
            url="https://madm.dfki.de/files/sentinel/EuroSAT.zip",
            filename="EuroSAT.zip",
            # torchvision's copy of the same archive (same md5 as the original)
            mirrors=(
                "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
            ),
            sha256="8ebea626349354c5328b142b96d0430e647051f26efc2dc974c843f25ecf70bd",
        ),
        google_drive("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o", "split_zhou_EuroSAT.json"),
    ),
    image_dir="2750",
    split_file="split_zhou_EuroSAT.json",
    notes="layout: eurosat/2750/<Class>/<Class>_<n>.jpg + split_zhou_EuroSAT.json",
    extra={"num_classes": 10, "split_sizes": (13500, 5400, 8100), "homepage": "https://github.com/phelber/eurosat"},
)
