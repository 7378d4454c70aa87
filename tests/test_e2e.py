"""End to end: a shrunken grid (tiny random CLIP, the real digits data, two methods, two seeds, two epochs)
through `snakemake` and through `dvc repro`, each in a temporary copy of the pipeline. Both produce the same
metrics files, the tables and the MLflow runs; a second `dvc repro` has nothing to do."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.workflow_helpers import ROOT, make_workspace, quiet_env

METHODS = ["coop", "prompt_ot"]
SEEDS = [1, 2]


def tiny_params() -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(
        backbone={"name": "tiny-vit", "pretrained": "none"},
        datasets=["digits"],
        methods=METHODS,
        seeds=SEEDS,
        protocols={
            "base2novel": {"datasets": ["digits"], "shots": 4},
            "cross_dataset": {"sources": [], "shots": 4, "evaluate": {"targets": []}},
            "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
            "few_shot": {"datasets": [], "shots": []},
        },
    )
    params["train"].update(epochs=2, num_workers=0)
    return yaml.safe_dump(params, sort_keys=False)


def run(cmd, cwd):
    env = quiet_env() | {"HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def metrics_of(folder):
    files = sorted(folder.glob("runs/base2novel/*/digits_4shot/seed*/metrics.json"))
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


def mlflow_runs(folder):
    code = ("import mlflow, json; mlflow.set_tracking_uri('sqlite:///' + __import__('os').path.abspath('mlflow.db'));"
            "runs = mlflow.search_runs(experiment_names=['prompt-ot'], output_format='list');"
            "c = mlflow.MlflowClient();"
            "print(json.dumps([{'tags': r.data.tags, 'metrics': r.data.metrics, 'status': r.info.status,"
            " 'artifacts': sorted(a.path for a in c.list_artifacts(r.info.run_id))} for r in runs]))")
    return json.loads(run([sys.executable, "-c", code], folder).stdout)


def check_outputs(folder):
    metrics = metrics_of(folder)
    assert len(metrics) == len(METHODS) * len(SEEDS)
    for raw in metrics.values():
        m = json.loads(raw)
        assert set(m["accuracy"]) == {"base", "novel"} and m["n"]["base"] > 0 and m["n"]["novel"] > 0
        assert m["hm"] == pytest.approx(2 * m["accuracy"]["base"] * m["accuracy"]["novel"]
                                        / (m["accuracy"]["base"] + m["accuracy"]["novel"]))
    table = (folder / "reports/tables/base2novel_average.tex").read_text()
    assert "Prompt-OT" in table and "CoOp" in table and "\\toprule" in table
    csv = (folder / "reports/tables/base2novel_average.csv").read_text()
    assert "prompt_ot" in csv
    assert (folder / "reports/figures").is_dir()
    return metrics


def test_shrunken_grid_through_snakemake_and_dvc(tmp_path):
    smk = make_workspace(tmp_path / "snakemake", tiny_params())
    run([sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"], smk)
    smk_metrics = check_outputs(smk)
    runs = mlflow_runs(smk)
    kinds = sorted(r["tags"].get("kind") for r in runs)
    assert kinds.count("train") == len(METHODS) * len(SEEDS)
    assert kinds.count("evaluate") == len(METHODS) * len(SEEDS)
    children = [r for r in runs if r["tags"].get("kind") in ("train", "evaluate")]
    assert all("mlflow.parentRunId" in r["tags"] for r in children), "child runs must hang under the pipeline's parent"
    parents = [r for r in runs if r["tags"].get("kind") == "pipeline"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    trained = [r for r in runs if r["tags"].get("kind") == "train"]
    assert all(r["artifacts"] == ["prompts.safetensors", "train.json", "train.log"] for r in trained)
    assert all(len(r["metrics"]) >= 4 and r["status"] == "FINISHED" for r in trained)
    assert {(r["tags"]["method"], r["tags"]["seed"]) for r in trained} == {(m, str(s)) for m in METHODS for s in SEEDS}

    dvc = make_workspace(tmp_path / "dvc", tiny_params())
    run([sys.executable, "-m", "dvc", "repro"], dvc)
    dvc_metrics = check_outputs(dvc)
    assert dvc_metrics == smk_metrics, "the same grid gave different metrics under Snakemake and DVC"
    again = run([sys.executable, "-m", "dvc", "repro"], dvc)
    assert "Running stage" not in again.stdout
    status = run([sys.executable, "-m", "dvc", "status"], dvc)
    assert "up to date" in status.stdout
