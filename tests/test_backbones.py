"""A list of backbones in params.yaml: a grid axis. Each backbone's runs, caches and reports in a folder of its key,
the stage commands told which (--backbone-key), the per-backbone table; the project's dvc.yaml (one backbone) refuses
it, and `dvc-yaml` writes the DVC pipeline with one stage set per backbone, whose jobs are the Snakefile's."""

import copy
import csv
import json
from pathlib import Path

import pytest
import yaml

from prompt_ot.cli import main
from prompt_ot.config import backbone_entries, backbone_key, select_backbone, validate_params
from prompt_ot.errors import UserError
from tests.support.data import smooth_image
from tests.support.params import shrunk_params
from tests.support.workflow import DVC, MLFLOW_OFF, SNAKEMAKE, dvc_jobs, files_of, make_workspace, run, snakemake_jobs

BACKBONES = [{"name": "tiny-vit", "pretrained": "none", "key": "tiny"}, {"name": "demo-vit", "pretrained": "none"}]


def grid_params() -> dict:
    return shrunk_params(
        base="paper",
        backbone=copy.deepcopy(BACKBONES),
        methods=["zeroshot", "coop"],
        datasets=["shapes"],
        custom_datasets={"shapes": {"format": "folder", "path": "shapes"}},
        protocols={"base2novel": {"datasets": ["shapes"], "shots": 2}},
        mlflow={"experiment": "backbones", "defer": False},
    )


def test_keys_entries_and_selection():
    params = grid_params()
    validate_params(params)
    assert [key for key, _ in backbone_entries(params)] == ["tiny", "demo_vit_none"]
    assert backbone_key({"name": "ViT-B-16-quickgelu", "pretrained": "runs/backbone/w.safetensors"}) == (
        "vit_b_16_quickgelu_w"
    )
    assert select_backbone(params, "demo_vit_none")["backbone"] == BACKBONES[1]
    with pytest.raises(UserError, match="name one with --backbone-key.*'nope' is none of them.*tiny, demo_vit_none"):
        select_backbone(params, "nope")
    single = shrunk_params(base="paper")
    assert backbone_entries(single) == [(None, single["backbone"])]
    with pytest.raises(UserError, match="has a single backbone"):
        select_backbone(single, "tiny")


def test_each_entry_is_checked_and_keys_must_differ():
    params = grid_params()
    params["backbone"].append({"name": "RN50", "pretrained": "openai"})
    params["methods"] = ["coop", "maple"]
    with pytest.raises(UserError, match="backbone entry 'rn50_openai'.*vision prompts of maple"):
        validate_params(params)
    params = grid_params()
    params["backbone"][1]["key"] = "tiny"
    with pytest.raises(UserError, match="two entries have the key 'tiny'"):
        validate_params(params)


def _workspace(tmp_path: Path, name: str = "project") -> Path:
    folder = make_workspace(tmp_path / name, grid_params())
    for c, label in enumerate(["circle", "square", "star", "wave"]):
        for k in range(8):
            path = folder / "shapes" / label / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(50 * c + k, 24, 20).save(path)
    return folder


@pytest.mark.system
def test_the_grid_runs_each_backbone_apart_and_sets_them_side_by_side(tmp_path):
    folder = _workspace(tmp_path)
    jobs = snakemake_jobs(folder)
    trains = sorted(cmd for cmd in jobs if cmd.startswith("python -m prompt_ot train "))
    assert len(trains) == 2 * 2  # two methods on each of two backbones
    assert {cmd.split("--backbone-key ")[1].split()[0] for cmd in trains} == {"tiny", "demo_vit_none"}
    assert all(f"--out runs/{cmd.split('--backbone-key ')[1].split()[0]}/base2novel/" in cmd for cmd in trains)
    # the data and the manifests are shared: one download and one split per dataset and seed, not one per backbone
    assert sum(cmd.startswith("python -m prompt_ot download shapes ") for cmd in jobs) == 1
    assert sum(cmd.startswith("python -m prompt_ot split shapes ") for cmd in jobs) == 1
    run([*SNAKEMAKE, "--cores", "2"], folder, **MLFLOW_OFF)
    values = {}
    for key, name in (("tiny", "tiny-vit"), ("demo_vit_none", "demo-vit")):
        for method in ("zeroshot", "coop"):
            metrics = json.loads(
                (folder / f"runs/{key}/base2novel/{method}/shapes_2shot/seed1/metrics.json").read_text()
            )
            assert metrics["backbone"] == name and metrics["provenance"]["backbone"] == name
            values[key, method] = metrics["hm"]
        assert (folder / f"cache/{key}/test/shapes").is_dir()
        assert (folder / f"reports/{key}/tables/base2novel_average.md").is_file()
    with open(folder / "reports/per_backbone/per_backbone.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(row["protocol"], row["method"]) for row in rows] == [("base2novel", "zeroshot"), ("base2novel", "coop")]
    for row in rows:
        for key in ("tiny", "demo_vit_none"):
            assert float(row[key]) == pytest.approx(values[key, row["method"]], abs=1e-9)
    assert values["tiny", "zeroshot"] != values["demo_vit_none", "zeroshot"]  # two different models really ran
    # predict takes each run's own backbone from the list (its provenance names it)
    import prompt_ot

    images = sorted((folder / "shapes" / "star").glob("*.png"))[:2]
    for key, width in (("tiny", 64), ("demo_vit_none", 128)):
        trained = prompt_ot.load_run(folder / f"runs/{key}/base2novel/coop/shapes_2shot/seed1", device="cpu")
        assert trained.model.clip.text_projection.shape[1] == width
        assert trained.logits(images, ["star", "wave"]).shape == (2, 2)
    # the project's dvc.yaml has no backbone axis: its first stage refuses the list, saying what to do instead
    out = tmp_path / "resolved.json"
    assert main(["validate", "--params", str(folder / "params.yaml"), "--resolved", str(out)]) == 2
    assert not out.exists()
    # the pipeline written by dvc-yaml reproduces the same grid under DVC, byte for byte
    other = _workspace(tmp_path, "dvc")
    _write_dvc_yaml(other)
    run([*DVC, "repro"], other, **MLFLOW_OFF)
    for pattern in ("runs/*/base2novel/*/*/seed*/metrics.json", "runs/*/base2novel/*/*/seed*/prompts.safetensors"):
        ours = files_of(other, pattern)
        assert len(ours) == 4 and ours == files_of(folder, pattern), pattern
    table = files_of(other, "reports/per_backbone/per_backbone.*")  # .csv, .md, .tex
    assert len(table) == 3 and table == files_of(folder, "reports/per_backbone/per_backbone.*")
    again = run([*DVC, "repro"], other, **MLFLOW_OFF)
    assert "Running stage" not in again.stdout


def _write_dvc_yaml(folder: Path) -> None:
    params, pipeline = str(folder / "params.yaml"), str(folder / "dvc.yaml")
    assert main(["dvc-yaml", "--params", params, "--template", pipeline, "--out", pipeline]) == 0


def test_dvc_yaml_gives_each_backbone_its_stages_with_the_snakefiles_jobs(tmp_path, capsys):
    folder = _workspace(tmp_path)
    _write_dvc_yaml(folder)
    text = (folder / "dvc.yaml").read_text()
    assert text.startswith("# Written by `python -m prompt_ot dvc-yaml`") and "tiny, demo_vit_none" in text
    smk, dvc = snakemake_jobs(folder), dvc_jobs(folder)
    assert smk and set(smk) == set(dvc), (sorted(set(smk) - set(dvc))[:2], sorted(set(dvc) - set(smk))[:2])
    for cmd in smk:
        assert smk[cmd] == dvc[cmd], cmd
    assert sum(cmd.startswith("python -m prompt_ot report-backbones ") for cmd in dvc) == 1
    assert sum(cmd.startswith("python -m prompt_ot split shapes ") for cmd in dvc) == 1  # shared by the backbones
    stages = yaml.safe_load(text)["stages"]
    assert {"backbone_tiny", "backbone_demo_vit_none", "split_base2novel", "report_backbones"} <= set(stages)
    validate = stages["validate"]["cmd"]
    assert validate.endswith("--backbone-axis tiny demo_vit_none")
    # a params.yaml whose list changed after the pipeline was written is refused by its first stage
    changed = grid_params()
    changed["backbone"][1]["key"] = "demo"
    (folder / "params.yaml").write_text(yaml.safe_dump(changed))
    resolved = tmp_path / "params_resolved.json"
    axis = validate.split("--backbone-axis ")[1].split()
    capsys.readouterr()
    argv = ["validate", "--params", str(folder / "params.yaml"), "--resolved", str(resolved), "--backbone-axis", *axis]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lists the backbones tiny, demo, but dvc.yaml has stages for tiny, demo_vit_none" in err
    assert "python -m prompt_ot dvc-yaml" in err and not resolved.exists()


def test_dvcs_validate_stage_refuses_a_list_with_one_message(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(grid_params()))
    assert main(["validate", "--params", str(path), "--resolved", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "backbone lists 2 backbones (tiny, demo_vit_none), and dvc.yaml runs one" in err and "Snakemake" in err
    assert f"python -m prompt_ot dvc-yaml --params {path} --out dvc.yaml" in err
    assert main(["validate", "--params", str(path)]) == 0  # a plain check of the file accepts it


def test_dvc_yaml_refuses_keys_that_would_give_two_stages_one_name(tmp_path, capsys):
    params = grid_params()
    params["backbone"][0]["key"] = "backbones"  # report + "_backbones" is the per-backbone table's stage
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    template = Path(__file__).resolve().parents[1] / "dvc.yaml"
    out = tmp_path / "dvc.yaml"
    assert main(["dvc-yaml", "--params", str(path), "--template", str(template), "--out", str(out)]) == 2
    assert "make two stages of one name" in capsys.readouterr().err and not out.exists()
