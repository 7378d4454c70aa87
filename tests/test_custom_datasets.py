"""Datasets declared in params.yaml (custom_datasets: folder and CSV), class-name and template overrides of the
built-in ones, the split written once with its sha256, and one clear message for each kind of bad data."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from prompt_ot.cli import main
from prompt_ot.config import validate_params
from prompt_ot.data import registry
from prompt_ot.errors import UserError
from prompt_ot.utils.io import sha256_file
from tests.support.data import make_fixture, smooth_image
from tests.support.params import shrunk_params


@pytest.fixture(autouse=True)
def _forget_declared():
    yield
    registry.declare({}, {})


def _image(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth_image(seed, 12, 10).save(path, format=fmt)


def _folder(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    seed = start
    for label, n in counts.items():
        for k in range(n):
            _image(root / label / f"img {k}.png", seed)
            seed += 1
    return root


def _declare(tmp_path: Path, entry: dict, name: str = "mine", **extra) -> dict:
    params = shrunk_params(base="paper", datasets=["dtd", name], custom_datasets={name: entry}, **extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def _prepare(tmp_path: Path, entry: dict, name: str = "mine") -> tuple[dict, Path]:
    params = _declare(tmp_path, entry, name)
    params_file = tmp_path / "params.yaml"
    validate_params(params, str(params_file))
    spec = registry.dataset_spec(name)
    spec.prepare_fn(spec.dataset_dir(tmp_path / "data"))
    return json.loads((tmp_path / "data" / name / f"split_{name}.json").read_text()), params_file


# ---------------------------------------------------------------- the split


def test_a_folder_is_split_per_class_by_coops_rule_with_the_seed(tmp_path):
    counts = {"big_cat": 10, "dog": 7, "zebra": 4}
    _folder(tmp_path / "images", counts)
    split, _ = _prepare(tmp_path, {"format": "folder", "path": "images", "split": {"seed": 3}})
    for index, (label, n) in enumerate(sorted(counts.items())):  # labels: the sorted folder names
        got = {part: [e for e in split[part] if e[2] == label] for part in ("train", "val", "test")}
        assert all(e[1] == index for part in got.values() for e in part)
        assert len(got["train"]) == round(n * 0.5) and len(got["val"]) == round(n * 0.2)
        assert len(got["test"]) == n - round(n * 0.5) - round(n * 0.2)
        every = sorted(e[0] for part in got.values() for e in part)
        assert every == sorted(f"{label}/img {k}.png" for k in range(n))  # each image once, relative to the folder
    other_seed, _ = _prepare(tmp_path / "b", {"format": "folder", "path": "../images", "split": {"seed": 4}})
    assert other_seed != split  # the seed decides the draw
    again, _ = _prepare(tmp_path / "c", {"format": "folder", "path": "../images", "split": {"seed": 3}})
    assert again == split


def test_the_declared_dataset_is_a_dataset_with_prompt_names_and_templates(tmp_path):
    _folder(tmp_path / "images", {"big_cat": 4, "dog": 4})
    entry = {
        "format": "folder",
        "path": "images",
        "classnames": {"big_cat": "tiger"},
        "templates": ["a clip art of a {}.", "a drawing of a {}."],
    }
    _prepare(tmp_path, entry)
    spec = registry.dataset_spec("mine")
    split = spec.load_split(tmp_path / "data")
    assert registry.classnames_of(split) == ["tiger", "dog"]  # mapped; unmapped: the label, underscores as spaces
    assert spec.zero_shot_templates == ("a clip art of a {}.", "a drawing of a {}.")
    assert spec.template == "a clip art of a {}."
    assert (spec.image_root(tmp_path / "data") / split["train"][0].relpath).is_file()
    assert "mine" in registry.dataset_names()


def test_a_presplit_folder_keeps_its_split_and_takes_val_from_train_when_it_has_none(tmp_path):
    _folder(tmp_path / "images" / "train", {"a": 5, "b": 5})
    _folder(tmp_path / "images" / "test", {"a": 2, "b": 3}, start=100)
    split, _ = _prepare(tmp_path, {"format": "folder", "path": "images"})
    assert Counter(e[2] for e in split["test"]) == {"a": 2, "b": 3}
    assert all(e[0].startswith("test/") for e in split["test"])
    assert Counter(e[2] for e in split["val"]) == {"a": 1, "b": 1}  # round(5 * 0.2): CoOp's split_trainval
    assert len(split["train"]) == 8 and all(e[0].startswith("train/") for e in split["train"] + split["val"])


def test_a_csv_with_windows_line_endings_spaces_and_non_ascii_paths(tmp_path):
    rows = []
    for k, (label, part) in enumerate([("0", "train"), ("0", "test"), ("1", "train"), ("1", "test"), ("1", "val")]):
        rel = f"bilder/Käse und Brot/{k}.png"
        _image(tmp_path / "root" / rel, k)
        rows.append(f"{rel},{label},{part}")
    (tmp_path / "labels.csv").write_bytes(("\ufeffpath,label,split\r\n" + "\r\n".join(rows) + "\r\n").encode())
    entry = {"format": "csv", "path": "labels.csv", "root": "root", "classnames": {0: "cheese", 1: "bread"}}
    split, _ = _prepare(tmp_path, entry)
    assert [e[2] for e in split["train"]] == ["0", "1"] and len(split["val"]) == 1 and len(split["test"]) == 2
    loaded = registry.dataset_spec("mine").load_split(tmp_path / "data")
    assert registry.classnames_of(loaded) == ["cheese", "bread"]
    assert loaded["train"][0].relpath == "bilder/Käse und Brot/0.png"


# ---------------------------------------------------------------- bad data: one message naming what is wrong


def _refused(tmp_path, entry, *needles):
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, entry)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert not (tmp_path / "data" / "mine" / "split_mine.json").exists()  # nothing written
    return str(err.value)


def test_an_empty_class_is_named(tmp_path):
    _folder(tmp_path / "images", {"a": 3, "b": 3})
    (tmp_path / "images" / "empty_one").mkdir()
    _refused(tmp_path, {"format": "folder", "path": "images"}, "empty_one", "hold no images")


def test_every_unreadable_or_truncated_image_is_listed(tmp_path):
    _folder(tmp_path / "images", {"a": 4, "b": 4})
    (tmp_path / "images" / "a" / "web_page.jpg").write_text("<html>not an image</html>")
    whole = (tmp_path / "images" / "b" / "img 0.png").read_bytes()
    (tmp_path / "images" / "b" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "images" / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a dangling link
    message = _refused(tmp_path, {"format": "folder", "path": "images"}, "3 image(s) cannot be read")
    assert "a/web_page.jpg" in message and "b/cut.png" in message and "b/gone.png (FileNotFoundError" in message


def test_the_same_image_in_two_splits_is_a_leak(tmp_path):
    _folder(tmp_path / "images" / "train", {"a": 3, "b": 3})
    _folder(tmp_path / "images" / "test", {"a": 1, "b": 1}, start=50)
    copy = (tmp_path / "images" / "train" / "a" / "img 2.png").read_bytes()
    (tmp_path / "images" / "test" / "a" / "copy.png").write_bytes(copy)
    _refused(tmp_path, {"format": "folder", "path": "images"}, "leaks", "test/a/copy.png (test)", "train/a/img 2.png")


def test_non_image_files_are_skipped_and_counted(tmp_path, capsys):
    _folder(tmp_path / "images", {"a": 4, "b": 4})
    (tmp_path / "images" / "a" / "notes.txt").write_text("x")
    (tmp_path / "images" / "b" / "labels.xml").write_text("x")
    (tmp_path / "images" / "README.txt").write_text("x")  # beside the class folders: in no class
    split, _ = _prepare(tmp_path, {"format": "folder", "path": "images"})
    assert "skipped 3 non-image file(s): README.txt, a/notes.txt, b/labels.xml" in capsys.readouterr().out
    assert sum(len(v) for v in split.values()) == 8


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("file,label\na.png,x\n", ("column(s) path are missing", "file, label")),
        ("path,label\na.png,cat\nb.png,dog\n", ("1 label(s) are not in", "dog")),
        ("path,label,split\na.png,cat,train\nb.png,cat,holdout\n", ("not train, val or test", "'holdout'")),
        ("path,label\nmissing.png,cat\n", ("do not exist", "missing.png")),
        ("path,label\n/etc/a.png,cat\n", ("absolute",)),
    ],
)
def test_a_bad_csv_is_named(tmp_path, text, needles):
    _image(tmp_path / "a.png", 1)
    _image(tmp_path / "b.png", 2)
    (tmp_path / "labels.csv").write_text(text)
    _refused(tmp_path, {"format": "csv", "path": "labels.csv", "classnames": {"cat": "cat"}}, *needles)


def test_number_labels_need_class_names(tmp_path):
    _image(tmp_path / "a.png", 1)
    (tmp_path / "labels.csv").write_text("path,label\na.png,3\n")
    _refused(tmp_path, {"format": "csv", "path": "labels.csv"}, "labels are numbers", "classnames")


def test_fewer_training_images_than_shots_says_what_the_sampler_does(tmp_path, capsys):
    _folder(tmp_path / "images", {"a": 12, "b": 4})
    _, params_file = _prepare(tmp_path, {"format": "folder", "path": "images"})
    out = tmp_path / "manifest.json"
    argv = ["split", "mine", "--root", str(tmp_path / "data"), "--shots", "4", "--out", str(out)]
    assert main([*argv, "--params", str(params_file)]) == 0
    text = capsys.readouterr().out
    assert "1 class(es) have fewer training images than 4 shots: b (2)" in text and "takes all" in text
    manifest = json.loads(out.read_text())
    assert manifest["split_sha256"] == sha256_file(tmp_path / "data" / "mine" / "split_mine.json")
    assert Counter(e["classname"] for e in manifest["train"]) == {"a": 4, "b": 2}


# ---------------------------------------------------------------- a changed folder is noticed


def test_a_changed_folder_names_what_changed_and_keeps_the_split(tmp_path):
    _folder(tmp_path / "images", {"a": 5, "b": 5})
    split, _ = _prepare(tmp_path, {"format": "folder", "path": "images"})
    split_file = tmp_path / "data" / "mine" / "split_mine.json"
    digest = sha256_file(split_file)
    spec = registry.dataset_spec("mine")
    _image(tmp_path / "images" / "a" / "new one.png", 99)
    (tmp_path / "images" / "b" / "img 1.png").unlink()
    with pytest.raises(UserError) as err:
        spec.load_split(tmp_path / "data")
    assert "1 appeared: a/new one.png" in str(err.value) and "1 disappeared: b/img 1.png" in str(err.value)
    with pytest.raises(UserError):  # the download stage does not re-split either
        spec.prepare_fn(spec.dataset_dir(tmp_path / "data"))
    assert sha256_file(split_file) == digest
    (tmp_path / "images" / "a" / "new one.png").unlink()
    _image(tmp_path / "images" / "b" / "img 1.png", 6)  # the same content as before (seed 5 + 1)
    assert spec.load_split(tmp_path / "data")["train"]  # restored: accepted again


def test_a_manifest_of_another_split_is_refused(tmp_path):
    make_fixture("dtd", tmp_path / "data")
    out = tmp_path / "m.json"
    assert main(["split", "dtd", "--root", str(tmp_path / "data"), "--shots", "1", "--out", str(out)]) == 0
    split_file = next((tmp_path / "data" / "dtd").glob("split_*.json"))
    data = json.loads(split_file.read_text())
    data["val"] = data["val"][:-1]
    split_file.write_text(json.dumps(data))
    with pytest.raises(UserError, match="the split changed"):
        from prompt_ot.data.fewshot import ensure_manifest

        spec = registry.dataset_spec("dtd")
        root = tmp_path / "data"
        ensure_manifest(
            out, spec.load_split(root), spec.image_root(root), "dtd", "all", 1, 1, "dassl", spec.split_sha256(root)
        )


# ---------------------------------------------------------------- the built-in datasets' overrides


def test_overrides_rename_classes_of_a_built_in_dataset_and_refuse_unknown_ones(tmp_path):
    make_fixture("dtd", tmp_path / "data")
    original = registry.classnames_of(registry.dataset_spec("dtd").load_split(tmp_path / "data"))
    overrides = {"dtd": {"classnames": {original[0]: "first texture"}, "templates": "a close-up of {} texture."}}
    validate_params(shrunk_params(base="paper", dataset_overrides=overrides))
    spec = registry.dataset_spec("dtd")
    assert registry.classnames_of(spec.load_split(tmp_path / "data")) == ["first texture", *original[1:]]
    assert spec.zero_shot_templates == ("a close-up of {} texture.",) and spec.overridden == ("classnames", "templates")
    validate_params(shrunk_params(base="paper", dataset_overrides={"dtd": {"classnames": {"no such": "x"}}}))
    with pytest.raises(UserError, match=r"dataset_overrides.dtd.classnames: 'no such' is not a class of dtd"):
        registry.dataset_spec("dtd").load_split(tmp_path / "data")
    validate_params(shrunk_params(base="paper"))
    assert registry.classnames_of(registry.dataset_spec("dtd").load_split(tmp_path / "data")) == original


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"custom_datasets": {"dtd": {"format": "folder", "path": "x"}}}, "name of a built-in dataset"),
        ({"dataset_overrides": {"nope": {"templates": "a {}."}}}, "'nope' is not a known dataset"),
        ({"dataset_overrides": {"dtd": {"templates": "no slot"}}}, "exactly one '{}'"),
        ({"custom_datasets": {"mine": {"format": "zip", "path": "x"}}}, "custom_datasets.mine.format"),
        ({"custom_datasets": {"mine": {"format": "folder"}}}, "'path' is a required property"),
        ({"custom_datasets": {"mine": {"format": "folder", "path": "x", "split": {"train": 0.9}}}}, "add up to 1"),
        ({"custom_datasets": "missing.yaml"}, "does not exist"),
    ],
)
def test_bad_declarations_are_refused_at_validation(extra, needle):
    with pytest.raises(UserError, match=None) as err:
        validate_params(shrunk_params(base="paper", **extra))
    assert needle in str(err.value)


def test_a_declaration_file_named_by_params(tmp_path):
    _folder(tmp_path / "sets" / "images", {"a": 3, "b": 3})
    (tmp_path / "sets" / "datasets.yaml").write_text(
        yaml.safe_dump({"custom_datasets": {"mine": {"format": "folder", "path": "images"}}})
    )
    params = shrunk_params(base="paper", datasets=["dtd", "mine"], custom_datasets="sets/datasets.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    validate_params(params, str(tmp_path / "params.yaml"))
    spec = registry.dataset_spec("mine")
    assert spec.image_root("data") == (tmp_path / "sets" / "images").resolve()  # relative to the file that names it


def test_zero_shot_ensembles_the_templates_as_clip_does():
    from prompt_ot.evaluate import ensemble

    a, b = torch.randn(5, 8), torch.randn(5, 8)
    expected = a / a.norm(dim=-1, keepdim=True) + b / b.norm(dim=-1, keepdim=True)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(ensemble([a, b]), expected, atol=1e-6)
    assert torch.allclose(ensemble([a]), a / a.norm(dim=-1, keepdim=True))
    assert math.isclose(float(ensemble([a, b]).norm(dim=-1).mean()), 1.0, rel_tol=1e-6)


def test_captions_name_overridden_and_declared_datasets(tmp_path):
    from prompt_ot.report.grid import dataset_option_notes

    _folder(tmp_path / "images", {"a": 4, "b": 4})
    overrides = {"dtd": {"classnames": {"x": "y"}, "templates": "a {}."}}
    params = _declare(tmp_path, {"format": "folder", "path": "images"}, dataset_overrides=overrides)
    validate_params(params, str(tmp_path / "params.yaml"))
    assert dataset_option_notes(params) == [
        "Defaults overridden in params.yaml (dataset_overrides): dtd (class names and templates).",
        "Datasets declared in params.yaml (custom_datasets): mine.",
    ]
    assert dataset_option_notes(shrunk_params(base="paper")) == []


def test_an_image_turned_into_a_dangling_link_is_named_as_changed(tmp_path):
    _folder(tmp_path / "images", {"a": 4, "b": 4})
    _prepare(tmp_path, {"format": "folder", "path": "images"})
    target = tmp_path / "images" / "a" / "img 0.png"
    target.unlink()
    target.symlink_to(tmp_path / "gone.png")
    with pytest.raises(UserError, match="1 changed size: a/img 0.png"):
        registry.dataset_spec("mine").load_split(tmp_path / "data")
