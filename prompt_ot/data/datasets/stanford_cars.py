"""Stanford Cars (Krause et al., 2013): 196 car models. Split: CoOp's ``split_zhou_StanfordCars.json``.

The dataset's own links (ai.stanford.edu/~jkrause/...) are dead, so the images are a manual step;
the split file is still fetched automatically.
"""

from prompt_ot.data.download import google_drive
from prompt_ot.data.registry import DatasetSpec

MANUAL_STEPS = """
Stanford Cars' original download links (ai.stanford.edu/~jkrause/car196/...) no longer work, and no
other host is both official and stable, so its images must be put in place by hand:
  1. Get the original archives cars_train.tgz (8,144 images) and cars_test.tgz (8,041 images), e.g.
     from a copy you or your institution already hold or from a mirror you trust.
  2. Extract both into {folder} so that it holds
       {folder}/cars_train/00001.jpg ... 08144.jpg
       {folder}/cars_test/00001.jpg ... 08041.jpg
     (CoOp's layout also keeps devkit/ and cars_test_annos_withlabels.mat there; prompt-ot does not
     read them.)
  3. CoOp's split file {folder}/split_zhou_StanfordCars.json is fetched by this command; if that
     fails, save it there by hand from
     https://drive.google.com/file/d/1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT/view
  4. Check the folder: python -m prompt_ot download stanford_cars --root {root} --check
"""

DATASET = DatasetSpec(
    name="stanford_cars",
    folder="stanford_cars",
    template="a photo of a {}.",
    sources=(google_drive("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT", "split_zhou_StanfordCars.json"),),
    image_dir="",  # split paths start with cars_train/ or cars_test/
    split_file="split_zhou_StanfordCars.json",
    manual_steps=MANUAL_STEPS,
    notes="layout: stanford_cars/{cars_train,cars_test}/ + split_zhou_StanfordCars.json",
    extra={
        "num_classes": 196,
        "split_sizes": (6509, 1635, 8041),
        "homepage": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    },
)
