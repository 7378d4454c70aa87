"""`predict` and `prompt_ot.load_run`: a run's trained prompts classify any images against any class list.

A tiny coop and cocoop run are trained and evaluated through the CLI on the generated DTD fixture; predict's top-1
labels on the base test images must be the evaluate stage's predictions for the same images and classes. Bad input
(no prompts, an unreadable image, no classes, missing backbone weights, a top-k past the class count) gets one
clear error line and exit status 2.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prompt_ot.cli import main
from tests.support.cli import TINY_CPU, argv, evaluate_argv, manifest_and_cache, train_argv
from tests.support.data import make_fixture
from tests.support.params import shrunk_params

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("coop", "cocoop")


def distinct_images(folder: Path) -> None:
    """Each fixture image replaced by its own picture (the generated ones are all alike), of its own non-square size,
    so that images differ in their logits and the resize and centre crop matter."""
    from PIL import Image

    for k, path in enumerate(sorted(folder.rglob("*.jpg"))):
        rng = np.random.default_rng(k)
        height, width = 40 + 7 * (k % 5), 52 + 11 * (k % 3)
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.random(3)[None, None, :]
        pixels = 255 * (0.5 * ramp + 0.5 * rng.random((height, width, 3)))
        Image.fromarray(pixels.astype("uint8")).save(path, format="JPEG", quality=95)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """dtd fixture, params.yaml (paths.runs: runs), a coop and a cocoop run trained and evaluated through the CLI."""
    base = tmp_path_factory.mktemp("predict")
    saved = os.environ.get("PROMPT_OT_MLFLOW")
    os.environ["PROMPT_OT_MLFLOW"] = "off"
    root = base / "data"
    split = make_fixture("dtd", root, num_classes=4, per_split=(2, 1, 2))
    distinct_images(root / "dtd" / "images")
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump(shrunk_params("paper", mlflow={"experiment": "predict"})))
    manifest, cache = base / "runs" / "manifest.json", base / "runs" / "train_cache"
    manifest.parent.mkdir()
    manifest_and_cache(root, manifest, cache, epochs=2)
    assert main(argv("cache", "test", "dtd", params=params, root=root, out=base / "test" / "dtd", **TINY_CPU)) == 0
    runs = {}
    for method in METHODS:
        run = base / "runs" / method
        assert main(train_argv(params, method, manifest, cache, run)) == 0
        metrics = run / "metrics.json"
        assert main(evaluate_argv(params, method, run / "prompts.safetensors", base / "test", metrics)) == 0
        runs[method] = run
    yield {"base": base, "root": root, "params": params, "split": split, "runs": runs}
    if saved is None:
        os.environ.pop("PROMPT_OT_MLFLOW", None)
    else:
        os.environ["PROMPT_OT_MLFLOW"] = saved


def base_test_images(work, run: Path) -> tuple[list[Path], list[str], np.ndarray, np.ndarray]:
    """The base test images in the evaluate stage's order, the base class names, and its predictions and labels."""
    from prompt_ot.cache import TestFeatures

    part = TestFeatures(work["base"] / "test" / "dtd", backbone="tiny-vit").subset("base")
    classnames = list(part.classnames)
    items = [it for it in work["split"]["test"] if it.classname in classnames]
    images = [work["root"] / "dtd" / "images" / it.relpath for it in items]
    saved = np.load(run / "predictions.npz")
    assert [classnames.index(it.classname) for it in items] == saved["base/labels"].tolist()  # the same images
    return images, classnames, saved["base/predictions"], saved["base/labels"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("method", METHODS)
def test_top1_of_predict_is_what_evaluate_predicted(work, capsys, tmp_path, method):
    run = work["runs"][method]
    images, classnames, predicted, labels = base_test_images(work, run)
    assert len(images) >= 2 and len(classnames) >= 2
    out = tmp_path / "predictions.csv"
    # the params.yaml above the run is found (its paths.runs holds the run folder)
    assert main(argv("predict", run=run, images=images, classes=classnames, top_k=2, out=out, device="cpu")) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["file", "label_1", "prob_1", "label_2", "prob_2"]
    assert [row["file"] for row in rows] == [str(p) for p in images]
    assert [classnames.index(row["label_1"]) for row in rows] == predicted.tolist()
    for row in rows:
        probs = [float(row["prob_1"]), float(row["prob_2"])]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
        assert row["label_1"] != row["label_2"]

    # the Python API: the same top-1, logits of the model's forward, probabilities their softmax
    import prompt_ot

    trained = prompt_ot.load_run(run, params=work["params"], device="cpu")
    assert trained.model.conditional == (method == "cocoop")
    logits = trained.logits(images, classnames)
    assert logits.shape == (len(images), len(classnames))
    assert logits.argmax(-1).tolist() == predicted.tolist()
    top = trained.predict(images, classnames, top_k=len(classnames))
    assert [[label for label, _ in row][0] for row in top] == [classnames[i] for i in predicted]
    for row, row_logits in zip(top, logits.double().softmax(-1)):
        assert [p for _, p in row] == sorted((p for _, p in row), reverse=True)
        assert sum(p for _, p in row) == pytest.approx(1.0)
        assert dict(row) == pytest.approx(dict(zip(classnames, row_logits.tolist())))
    # the whole logits, not only their argmax (a tiny random CLIP may predict one class for every image): the
    # features the test cache holds for the same images, against the class prompts of the run's dataset template
    import torch

    from prompt_ot.cache import TestFeatures
    from prompt_ot.data.registry import dataset_spec

    cached = TestFeatures(work["base"] / "test" / "dtd", backbone="tiny-vit").subset("base").image_features.float()
    model = trained.model
    model.set_classnames(classnames, dataset_spec("dtd").template)
    with torch.no_grad():
        if method == "cocoop":
            expected = model.conditional_logits(cached)
        else:
            expected = model.logit_scale * cached @ model.class_text_features().t()
    assert torch.allclose(logits, expected, atol=1e-4), (logits, expected)
    assert not torch.allclose(logits[0], logits[-1], atol=1e-4)  # images of two classes: logits that differ
    # a PIL image gives what its file gives
    from PIL import Image

    with Image.open(images[0]) as pil:
        assert trained.logits([pil], classnames)[0].tolist() == pytest.approx(logits[0].tolist(), abs=1e-5)


def test_a_folder_is_searched_recursively_and_novel_classes_from_a_file(work, tmp_path):
    run = work["runs"]["coop"]
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    sources = sorted((work["root"] / "dtd" / "images").rglob("*.jpg"))[:3]
    for name, source in zip(("b/two.jpg", "a.jpg", "c.png"), sources):
        (folder / name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an image\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("striped\n\nzigzagged\nveined\n")  # names the run never trained on
    out = tmp_path / "p.csv"
    code = argv("predict", run=run, images=[folder], classes_file=classes, out=out, device="cpu")  # top 5 of 3: 3
    assert main(code + ["--params", str(work["params"])]) == 0
    rows = read_csv(out)
    assert [row["file"] for row in rows] == [str(folder / n) for n in ("a.jpg", "b/two.jpg", "c.png")]
    for row in rows:
        assert {row["label_1"], row["label_2"], row["label_3"]} == {"striped", "zigzagged", "veined"}
        probs = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1


def _bad_cases(work, tmp_path) -> dict:
    run = work["runs"]["coop"]
    image = next((work["root"] / "dtd" / "images").rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    no_prompts = tmp_path / "runs" / "unfinished"
    no_prompts.mkdir(parents=True)
    (no_prompts / "train.json").write_text("{}\n")
    missing_weights = tmp_path / "params.yaml"
    missing_weights.write_text(
        yaml.safe_dump(shrunk_params("paper", backbone={"pretrained": str(tmp_path / "gone" / "tiny.safetensors")}))
    )
    common = {"out": tmp_path / "p.csv", "device": "cpu"}
    return {
        "no prompts": (
            argv("predict", run=no_prompts, images=[image], classes=["a", "b", "c", "d", "e"], **common),
            ["unfinished", "no prompts.safetensors", "train"],
        ),
        "unreadable image": (
            argv("predict", run=run, images=[image, broken], classes=["a", "b"], top_k=1, **common),
            [str(broken), "cannot be read"],
        ),
        "empty class list": (
            argv("predict", run=run, images=[image], classes_file=empty, **common),
            ["class list is empty"],
        ),
        "missing weights": (
            argv("predict", run=run, images=[image], classes=["a", "b"], top_k=1, params=missing_weights, **common),
            ["gone/tiny.safetensors", "does not exist"],
        ),
        "top-k past the classes": (
            argv("predict", run=run, images=[image], classes=["a", "b", "c"], top_k=4, **common),
            ["--top-k 4", "number of classes (3)"],
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["no prompts", "unreadable image", "empty class list", "missing weights", "top-k past the classes"],
)
def test_bad_input_gets_one_clear_error(work, capsys, tmp_path, case):
    words_argv, words = _bad_cases(work, tmp_path)[case]
    capsys.readouterr()
    rc = main([str(a) for a in words_argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} missing from {lines[0]}"
    assert not (tmp_path / "p.csv").exists()


def test_a_run_outside_any_params_runs_folder_asks_for_params(work, tmp_path):
    from prompt_ot.errors import UserError
    from prompt_ot.predict import load_run

    copy = tmp_path / "copied_run"
    copy.mkdir()
    for name in ("prompts.safetensors", "train.json"):
        (copy / name).write_bytes((work["runs"]["coop"] / name).read_bytes())
    with pytest.raises(UserError, match="pass the params file"):
        load_run(copy, device="cpu")
    assert load_run(copy, params=work["params"], device="cpu").method.name == "coop"


def test_the_api_refuses_bad_class_lists_and_top_k(work):
    from prompt_ot.errors import UserError
    from prompt_ot.predict import load_run

    trained = load_run(work["runs"]["coop"], params=work["params"], device="cpu")
    image = next((work["root"] / "dtd" / "images").rglob("*.jpg"))
    with pytest.raises(UserError, match="class list is empty"):
        trained.predict([image], [])
    with pytest.raises(UserError, match="more than once: a"):
        trained.logits([image], ["a", "b", "a"])
    with pytest.raises(UserError, match="top-k 3 is larger than the number of classes"):
        trained.predict([image], ["a", "b"], top_k=3)


def test_import_prompt_ot_stays_light_and_exports_load_run():
    code = (
        "import sys, prompt_ot; assert 'torch' not in sys.modules and 'prompt_ot.predict' not in sys.modules;"
        "f = prompt_ot.load_run; assert f.__module__ == 'prompt_ot.predict' and callable(f);"
        "import pytest; pytest.raises(AttributeError, getattr, prompt_ot, 'no_such_thing')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("method", ["cocoop", "maple", "promptsrc", "prompt_ot"])
def test_on_the_demos_data_predict_equals_the_evaluate_stage(shrunken_grid, monkeypatch, tmp_path, method):
    """The session grid (the demo's configuration: its pretrained small CLIP, the digits): predict on the digits'
    base test images, from the project folder as a user runs it, gives the evaluate stage's predictions."""
    from prompt_ot.data.registry import dataset_spec
    from tests.support.grid import DATASET, run_dir

    monkeypatch.chdir(shrunken_grid)  # the demo's weights path is relative to the project folder
    run = shrunken_grid / run_dir(method, 1)
    saved = np.load(run / "predictions.npz")
    from prompt_ot.cache import TestFeatures

    part = TestFeatures(shrunken_grid / "cache" / "test" / DATASET).subset("base")
    classnames = list(part.classnames)
    spec = dataset_spec(DATASET)
    items = [it for it in spec.load_split(shrunken_grid / "data")["test"] if it.classname in classnames]
    assert [classnames.index(it.classname) for it in items] == saved["base/labels"].tolist()
    images = [spec.image_root(shrunken_grid / "data") / it.relpath for it in items]
    out = tmp_path / "predictions.csv"
    assert main(argv("predict", run=run, images=images, classes=classnames, top_k=1, out=out, device="cpu")) == 0
    predicted = [classnames.index(row["label_1"]) for row in read_csv(out)]
    assert predicted == saved["base/predictions"].tolist()
    assert len(set(predicted)) > 1  # a trained model, not one that answers one class for everything
