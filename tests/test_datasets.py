"""The 15 benchmark datasets: registry names, CoOp's folders and templates, and split loading from fixtures."""

from __future__ import annotations

import json
import re

import pytest

from prompt_ot.data.download import check_dataset
from prompt_ot.data.registry import classnames_of, dataset_names, dataset_spec
from prompt_ot.errors import UserError
from tests.support.data import LAYOUTS, make_fixture

BENCHMARK = (
    "imagenet caltech101 oxford_pets stanford_cars flowers102 food101 fgvc_aircraft sun397 dtd eurosat ucf101".split()
)
TARGET_ONLY = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
DEMO_SHIFTS = [
    "digits_sketch",
    "fashion_mnist_v2",
    "fashion_mnist_sketch",
    "fashion_mnist_a",
    "fashion_mnist_r",
]  # the demo's DG sets
ALL = BENCHMARK + TARGET_ONLY

# CoOp's trainers/zsclip.py CUSTOM_TEMPLATES, keyed by our registry names
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "flowers102": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}


def test_all_fifteen_are_registered_with_their_kind():
    assert set(ALL) <= set(dataset_names())
    assert set(BENCHMARK) <= set(dataset_names("benchmark"))
    assert set(dataset_names("target_only")) == set(TARGET_ONLY + DEMO_SHIFTS)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        dataset_spec("oxford_petz")
    message = str(info.value)
    assert "oxford_petz" in message
    assert all(name in message for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_folder_layout_and_template_follow_coop(name):
    spec = dataset_spec(name)
    assert spec.name == name
    assert (spec.folder, spec.image_dir, spec.split_file) == LAYOUTS[name]
    assert spec.template.count("{}") == 1
    assert spec.template == COOP_TEMPLATES[name]
    assert "{}" not in spec.template.format("tabby cat")


@pytest.mark.parametrize("name", ALL)
def test_sources_are_well_formed(name):
    spec = dataset_spec(name)
    filenames = [s.filename for s in spec.sources]
    assert len(filenames) == len(set(filenames))
    for source in spec.sources:
        for url in (source.url, *source.mirrors):
            assert re.match(r"https?://[^/]+\.[a-z]+/", url), url
        assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert "/" not in source.filename
        if source.filename.endswith(".json"):
            assert not source.extract
    # every dataset either downloads its split source or says how to put it in place by hand
    has_split_source = spec.split_file in filenames or spec.load_split_fn is not None
    assert has_split_source and (spec.sources or spec.manual_steps)


def test_manual_steps_where_no_automatic_source_works():
    for name in ("imagenet", "stanford_cars"):
        steps = dataset_spec(name).manual_steps
        assert steps and "{folder}" in steps and "--check" in steps
    assert "images/train/n01440764" in dataset_spec("imagenet").manual_steps
    assert "cars_train/" in dataset_spec("stanford_cars").manual_steps


@pytest.mark.parametrize("name", ALL)
def test_load_split_reads_the_fixture_back(tmp_path, name):
    expected = make_fixture(name, tmp_path)
    spec = dataset_spec(name)
    split = spec.load_split(tmp_path)
    assert {key: sorted(items) for key, items in split.items()} == {key: sorted(v) for key, v in expected.items()}
    names = classnames_of(split)
    assert sorted({it.label for items in split.values() for it in items}) == list(range(len(names)))
    for items in split.values():
        for item in items:
            assert (spec.image_root(tmp_path) / item.relpath).is_file()
    if name in TARGET_ONLY:
        assert split["train"] == [] and split["val"] == [] and split["test"]


def test_imagenet_family_class_names(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    for name in ("imagenet", "imagenet_v2", "imagenet_sketch"):
        assert dataset_spec(name).classnames_fn() == list(IMAGENET_CLASSNAMES)
    for name in ("imagenet_a", "imagenet_r"):
        names = dataset_spec(name).classnames_fn()
        assert len(names) == len(set(names)) == 200
        assert set(names) < set(IMAGENET_CLASSNAMES)
        # labels follow ImageNet's order, as CoOp numbers the sorted wnid folders
        assert [IMAGENET_CLASSNAMES.index(n) for n in names] == sorted(IMAGENET_CLASSNAMES.index(n) for n in names)
    make_fixture("imagenet_r", tmp_path)
    split = dataset_spec("imagenet_r").load_split(tmp_path)
    assert classnames_of(split) == dataset_spec("imagenet_r").classnames_fn()
    assert classnames_of(split)[:3] == ["goldfish", "great white shark", "hammerhead shark"]


def test_wnid_lists_match_timm_copies():
    """The embedded wnid lists agree with the copies timm (an open_clip dependency) ships."""
    from importlib import resources

    from prompt_ot.data.datasets.imagenet_a import IMAGENET_A_WNIDS
    from prompt_ot.data.datasets.imagenet_r import IMAGENET_R_WNIDS
    from prompt_ot.data.imagenet_classes import IMAGENET_WNIDS

    try:
        info = resources.files("timm") / "data" / "_info"
        theirs = {key: (info / f"imagenet{key}_synsets.txt").read_text().split() for key in ("", "_a", "_r")}
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("timm's synset lists are not installed")
    assert list(IMAGENET_WNIDS) == theirs[""]
    assert list(IMAGENET_A_WNIDS) == theirs["_a"]
    assert list(IMAGENET_R_WNIDS) == theirs["_r"]
    assert IMAGENET_WNIDS[0] == "n01440764" and list(IMAGENET_WNIDS) == sorted(set(IMAGENET_WNIDS))


def test_imagenet_with_a_missing_class_folder_is_refused(tmp_path):
    make_fixture("imagenet_a", tmp_path)
    folder = tmp_path / "imagenet-adversarial" / "imagenet-a" / "n01498041"
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    with pytest.raises(UserError, match="lacks 1 of its 200 class folders.*n01498041"):
        dataset_spec("imagenet_a").load_split(tmp_path)


def test_missing_dataset_folder_says_how_to_download(tmp_path):
    with pytest.raises(UserError, match="download dtd"):
        dataset_spec("dtd").load_split(tmp_path)


def test_split_file_that_is_not_json_names_the_file(tmp_path):
    make_fixture("oxford_pets", tmp_path)
    split_file = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    split_file.write_text("<html>Google Drive quota exceeded</html>")
    with pytest.raises(UserError, match=re.escape(str(split_file)) + ".*not valid JSON"):
        dataset_spec("oxford_pets").load_split(tmp_path)
    report = check_dataset(dataset_spec("oxford_pets"), tmp_path)
    assert not report.ok and str(split_file) in report.problems[0]


def test_fgvc_split_line_with_unknown_variant_names_file_and_line(tmp_path):
    make_fixture("fgvc_aircraft", tmp_path)
    test_file = tmp_path / "fgvc_aircraft" / "images_variant_test.txt"
    test_file.write_text(test_file.read_text() + "1234567 Boeing 999\n")
    with pytest.raises(UserError, match=r"images_variant_test.txt line \d+: variant 'Boeing 999'"):
        dataset_spec("fgvc_aircraft").load_split(tmp_path)


def test_check_reports_missing_listed_files(tmp_path):
    expected = make_fixture("eurosat", tmp_path, num_classes=10)
    spec = dataset_spec("eurosat")
    assert check_dataset(spec, tmp_path).ok
    gone = expected["test"][3].relpath
    (spec.image_root(tmp_path) / gone).unlink()
    report = check_dataset(spec, tmp_path)
    assert not report.ok
    assert report.missing == [gone]
    assert gone in report.problems[0] and "1 of 40" in report.problems[0]
    assert any("test lists 10 images, the full dataset 8100" in w for w in report.warnings)


def test_check_flags_wrong_class_count_and_unreadable_images(tmp_path):
    make_fixture("eurosat", tmp_path, num_classes=3)
    report = check_dataset(dataset_spec("eurosat"), tmp_path)
    assert any("3 classes, eurosat has 10" in p for p in report.problems)
    make_fixture("dtd", tmp_path, num_classes=47, per_split=(1, 0, 0))
    split = json.loads((tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    for relpath, _, _ in split["train"]:
        (tmp_path / "dtd" / "images" / relpath).write_text("<html>not an image</html>")
    report = check_dataset(dataset_spec("dtd"), tmp_path, decode=2)
    assert [p for p in report.problems if "not a readable image" in p]


def test_check_with_sample_checks_that_many_files(tmp_path):
    make_fixture("eurosat", tmp_path, num_classes=10)
    report = check_dataset(dataset_spec("eurosat"), tmp_path, sample=4)
    assert report.ok and report.checked_files == 4
    assert check_dataset(dataset_spec("eurosat"), tmp_path, sample=1000).checked_files == 40


def test_imagenet_training_files_are_listed_in_sorted_order(tmp_path):
    """CoOp lists each class folder with os.listdir, whose order depends on the file system; sorted by name is the
    one reproducible order, and it decides which 16 images the few-shot sampler picks."""
    from prompt_ot.data.imagenet_classes import IMAGENET_WNIDS

    make_fixture("imagenet", tmp_path)
    folder = dataset_spec("imagenet").image_root(tmp_path) / "train" / IMAGENET_WNIDS[3]
    names = ["n_9.JPEG", "n_10.JPEG", "a_2.JPEG", "Z_1.JPEG", ".hidden.JPEG"]
    for name in names:  # created in an order that is not sorted
        (folder / name).write_bytes(b"x")
    split = dataset_spec("imagenet").load_split(tmp_path)
    listed = [it.relpath.rsplit("/", 1)[1] for it in split["train"] if it.label == 3]
    assert listed == sorted([n for n in names if not n.startswith(".")] + [f"{IMAGENET_WNIDS[3]}_0.JPEG"])
    assert split["val"] == []  # as CoOp: ImageNet's val set is its test set, no few-shot validation images
