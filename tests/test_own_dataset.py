"""docs/own_dataset.md's example, run as written: the layout commands, the params.yaml block and the commands that
check, split and run it, through Snakemake, on Debian's clip art (where installed) and on generated images in the
same layout; the grid is the tests' shrunken one (tiny random CLIP, two methods, two epochs)."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.data import smooth_image
from tests.support.params import merge, shrunk_params
from tests.support.workflow import DVC, MLFLOW_OFF, ROOT, env, make_workspace, run

PAGE = ROOT / "docs" / "own_dataset.md"
CLIPART = Path("/usr/share/openclipart/png")
CATEGORIES = ("food/fruit", "food/vegetables", "animals/birds", "buildings/homes")

pytestmark = pytest.mark.system


def example(name: str) -> str:
    """The code block after ``<!-- example: name -->`` in the page."""
    found = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"docs/own_dataset.md has no example block {name!r}"
    return found.group(1)


def _workspace(tmp_path: Path) -> Path:
    params = shrunk_params(base="paper", methods=["zeroshot", "coop"], mlflow={"experiment": "own", "defer": False})
    params = merge(params, yaml.safe_load(example("params")))
    return make_workspace(tmp_path / "project", params)


def _generated_layout(folder: Path) -> None:
    """Generated images where the example's copy puts the clip art: one folder per category, distinct images."""
    for c, category in enumerate(CATEGORIES):
        for k in range(12):
            path = folder / "my_clipart" / Path(category).name / f"picture {k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(100 * c + k, 24, 20).save(path)


def _run_example(folder: Path) -> str:
    output = ""
    for line in example("run").strip().splitlines():
        result = run(line.replace("--cores all", "--cores 2").split(), folder, **MLFLOW_OFF)
        output += result.stdout + result.stderr
    return output


def _check_results(folder: Path, classes: int) -> None:
    split = json.loads((folder / "data" / "my_clipart" / "split_my_clipart.json").read_text())
    assert len({entry[2] for entry in split["train"]}) == classes
    metrics = sorted((folder / "runs" / "base2novel").glob("*/my_clipart_4shot/seed1/metrics.json"))
    assert [m.parts[-4] for m in metrics] == ["coop", "zeroshot"]
    record = json.loads(metrics[0].read_text())
    assert record["provenance"]["templates"] == ["a clip art of a {}.", "a drawing of a {}."]
    assert record["provenance"]["classnames"] == [["homes", "house"]]
    manifest = json.loads((folder / "runs" / "manifests" / "my_clipart" / "base_4shot_seed1.json").read_text())
    assert manifest["split_sha256"] == record["provenance"]["split_sha256"]
    assert (
        "house"
        in manifest["classnames"] + json.loads((folder / "cache/test/my_clipart/index.json").read_text())["classnames"]
    )
    tables = (folder / "reports" / "tables" / "base2novel_average.tex").read_text()
    assert "Datasets declared in params.yaml (custom\\_datasets): my\\_clipart" in tables or (
        "Datasets declared in params.yaml (custom_datasets): my_clipart" in tables
    )


def test_the_example_on_generated_images_in_snakemake_and_dvc(tmp_path):
    folder = _workspace(tmp_path)
    _generated_layout(folder)
    output = _run_example(folder)
    assert "my_clipart: 48 images of 4 classes (12 to 12 per class); train 24, val 8, test 16" in output
    _check_results(folder, 4)
    other = make_workspace(tmp_path / "dvc", (folder / "params.yaml").read_text())
    _generated_layout(other)
    run([*DVC, "repro"], other, **MLFLOW_OFF)
    _check_results(other, 4)
    for path in sorted((folder / "runs" / "base2novel").glob("*/my_clipart_4shot/seed1/metrics.json")):
        relative = path.relative_to(folder)
        assert json.loads((other / relative).read_text())["accuracy"] == json.loads(path.read_text())["accuracy"]
    for name in ("split_my_clipart.json", "source.json"):
        assert (other / "data/my_clipart" / name).read_bytes() == (folder / "data/my_clipart" / name).read_bytes()


def test_the_example_on_debians_clip_art(tmp_path):
    if not all((CLIPART / c).is_dir() for c in CATEGORIES):
        pytest.skip("Debian's openclipart-png is not installed (apt-get install openclipart-png)")
    folder = _workspace(tmp_path)
    layout = subprocess.run(["bash", "-e", "-c", example("layout")], cwd=folder, capture_output=True, text=True)
    assert layout.returncode == 0, layout.stderr
    output = _run_example(folder)
    stated = re.search(r"`download` prints what it found \(`(.*?) \.\.\.`\)", " ".join(PAGE.read_text().split()))
    assert stated and stated.group(1) in " ".join(output.split()), "the page's figures are not this run's"
    _check_results(folder, 4)


def test_the_leak_the_page_quotes_from_debians_clip_art(tmp_path):
    """The page's example of a leak is real: fruit and fish hold the same picture under one name."""
    if not all((CLIPART / c).is_dir() for c in (*CATEGORIES, "animals/fish")):
        pytest.skip("Debian's openclipart-png is not installed (apt-get install openclipart-png)")
    folder = _workspace(tmp_path)
    layout = example("layout").replace("food/vegetables", "animals/fish")
    subprocess.run(["bash", "-e", "-c", layout], cwd=folder, check=True)
    result = subprocess.run(
        ["python", "-m", "prompt_ot", "download", "my_clipart", "--params", "params.yaml"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env(),
    )
    assert result.returncode != 0
    quoted = re.search(r"download` stops with `(.*?)`", " ".join(PAGE.read_text().split())).group(1)
    head, tail = quoted.split(" ...: ")
    assert head in result.stderr and tail in " ".join(result.stderr.split())
    assert not (folder / "data" / "my_clipart" / "split_my_clipart.json").exists()
