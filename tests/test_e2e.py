"""End to end: the offline demo's configuration, shrunken (the session grid of tests/support/grid.py: the pipeline
pretrains its small CLIP on the digits, six methods, two seeds), through the real tools. Each equality has its own
test, so that a failure names the one that broke:

- Snakemake runs the grid: the pretrained backbone is far above chance, every run has its metrics, tables and
  figures are written, and MLflow holds every train and evaluate run, complete, under the pipeline's parent run;
- the same grid through `dvc repro` in another folder, from the splits on (the downloaded data and the pretrained
  backbone are the grid's, recorded with `dvc commit`), gives byte-identical manifests, feature caches, metrics files,
  tables and prompt files (the tools agree);
- a training and an evaluation job run in a process of their own write the same bytes as the same jobs forked from
  the fork server (which ran the grid's jobs);
- a second `dvc repro` has nothing to do.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prompt_ot.utils.io import sha256_file
from tests.support.forkserver import fork_server
from tests.support.grid import (
    EVALUATIONS_PER_SEED,
    FEW_SHOT_METHODS,
    METHODS,
    SEEDS,
    SHOTS,
    TRAINED,
    TRAININGS_PER_SEED,
    grid_params,
    run_dir,
)
from tests.support.workflow import (
    DVC,
    MLFLOW_OFF,
    adopt_done_stages,
    copy_workspace,
    dvc_stage_names,
    env,
    files_of,
    make_workspace,
    mlflow_client,
    run,
    tables_of,
)

pytestmark = pytest.mark.system

CHANCE = 100 / 10  # digits: 10 classes
SHIFTED_NAME = "digits_sketch"  # the cross-dataset target and shifted domain, as the CSV tables name it
METRICS = f"runs/base2novel/*/digits_{SHOTS}shot/seed*/metrics.json"
PROMPTS = f"runs/base2novel/*/digits_{SHOTS}shot/seed*/prompts.safetensors"


def check_outputs(folder):
    metrics = files_of(folder, METRICS)
    assert len(metrics) == len(METHODS) * len(SEEDS)
    for raw in metrics.values():
        m = json.loads(raw)
        assert set(m["accuracy"]) == {"base", "novel"} and m["n"]["base"] > 0 and m["n"]["novel"] > 0
        assert m["hm"] == pytest.approx(
            2 * m["accuracy"]["base"] * m["accuracy"]["novel"] / (m["accuracy"]["base"] + m["accuracy"]["novel"])
        )
    table = (folder / "reports/tables/base2novel_average.tex").read_text()
    assert "Prompt-OT" in table and "CLIP (zero-shot)" in table and "\\toprule" in table
    assert "Published" not in table  # the demo's configuration leaves the (incomparable) published rows out
    assert "prompt_ot" in (folder / "reports/tables/base2novel_average.csv").read_text()
    # every protocol's path ran: its table and its figure
    for table, figure in (
        ("cross_dataset", "cross_dataset_transfer"),
        ("domain_generalization", "domain_generalization"),
        ("few_shot", "few_shot"),
    ):
        assert SHIFTED_NAME in (folder / f"reports/tables/{table}.csv").read_text() or table == "few_shot", table
        assert (folder / f"reports/figures/{figure}.png").is_file(), figure
    return metrics


def test_snakemake_runs_the_grid_and_logs_complete_mlflow_runs(shrunken_grid):
    check_outputs(shrunken_grid)
    # the backbone was pretrained by the pipeline itself and knows the digits far above chance
    backbone = json.loads((shrunken_grid / "runs/backbone/backbone.json").read_text())
    assert backbone["pretrained_here"] and backbone["zero_shot_accuracy"]["digits"] > CHANCE + 40
    zeroshot = json.loads((shrunken_grid / run_dir("zeroshot", 1) / "metrics.json").read_text())
    assert min(zeroshot["accuracy"].values()) > 20 + 40  # 5 classes on each side: chance is 20%

    client = mlflow_client(f"sqlite:///{shrunken_grid / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    kinds = sorted(r.data.tags.get("kind") for r in runs)
    assert kinds.count("train") == TRAININGS_PER_SEED * len(SEEDS)
    assert kinds.count("evaluate") == EVALUATIONS_PER_SEED * len(SEEDS)
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("kind") in ("train", "evaluate")]
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    trained = [r for r in runs if r.data.tags.get("kind") == "train"]
    runs_of = {"base2novel": METHODS, "cross_dataset": METHODS, "few_shot": FEW_SHOT_METHODS}
    assert {(r.data.tags["protocol"], r.data.tags["method"], r.data.tags["seed"]) for r in trained} == {
        (protocol, m, str(s)) for protocol, methods in runs_of.items() for m in methods for s in SEEDS
    }
    for r in trained:
        assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == [
            "prompts.safetensors",
            "train.json",
            "train.log",
        ]
        if r.data.tags["method"] in TRAINED:  # per-epoch metrics, one value per epoch
            assert len(client.get_metric_history(r.info.run_id, "loss")) == grid_params()["train"]["epochs"]


@pytest.fixture(scope="module")
def dvc_grid(shrunken_grid, tmp_path_factory):
    """The grid's params through `dvc repro`, every stage forked from a fork server: (folder, the number of the
    server's children still alive when it ended). The grid's data and pretrained backbone are copied in and taken as
    done (its pretraining is the one expensive stage; tests/test_pretrain.py shows it deterministic)."""
    folder = make_workspace(tmp_path_factory.mktemp("dvc") / "ws", grid_params())
    for done in ("data", "runs/stamps", "runs/backbone"):
        shutil.copytree(shrunken_grid / done, folder / done, symlinks=True)
    names = dvc_stage_names(folder)
    adopt_done_stages(folder, redo=[n for n in names if not n.startswith(("download@", "backbone"))])
    with fork_server(folder.parent) as (socket_path, children):
        run([*DVC, "repro"], folder, PROMPT_OT_FORKSERVER=str(socket_path))
        return folder, children()


def test_snakemake_and_dvc_give_byte_identical_metrics_tables_and_prompts(shrunken_grid, dvc_grid):
    folder, alive = dvc_grid
    assert alive == 0  # every stage's child has ended
    for derived in ("runs/manifests/**/*.json", "cache/**/*.npy"):  # what the stages before training wrote
        ours = files_of(folder, derived)
        assert ours and ours == files_of(shrunken_grid, derived), f"{derived}: Snakemake and DVC differ"
    assert check_outputs(folder) == files_of(shrunken_grid, METRICS), "Snakemake and DVC gave different metrics"
    tables = tables_of(shrunken_grid)
    assert tables and tables.keys() == tables_of(folder).keys()
    for name, data in tables.items():
        assert tables_of(folder)[name] == data, f"{name} differs between the tools"
    prompts = files_of(shrunken_grid, PROMPTS)
    assert len(prompts) == len(METHODS) * len(SEEDS)
    assert files_of(folder, PROMPTS) == prompts  # canonical safetensors headers: identical runs, identical bytes


def _stage_command(folder, stage: str) -> list[str]:
    code = (
        "import json, sys; from dvc.repo import Repo; "
        "print(json.dumps([s.cmd for s in Repo('.').index.stages if s.addressing == sys.argv[1]]))"
    )
    (cmd,) = json.loads(run([sys.executable, "-c", code, stage], folder).stdout)
    return shlex.split(cmd)


def test_a_forked_job_writes_the_same_bytes_as_its_own_process(shrunken_grid, tmp_path):
    """The grid's jobs ran as forks of the fork server; the same train and evaluate commands (dvc.yaml's, which
    Snakemake's equal: tests/test_workflow.py), each in a process of its own, write the same bytes."""
    method = "prompt_ot"
    folder = copy_workspace(shrunken_grid, tmp_path / "ws", run_dir(method, 1), "mlflow.db", "mlartifacts")
    for stage in (f"train_base2novel@{method}-digits-1", f"evaluate_base2novel@{method}-digits-1"):
        cmd = _stage_command(folder, stage)
        assert cmd[:3] == ["python", "-m", "prompt_ot"]
        run([sys.executable, *cmd[1:]], folder, PROMPT_OT_FORKSERVER="", **MLFLOW_OFF)
    for name in ("prompts.safetensors", "metrics.json"):
        own, forked = (f / run_dir(method, 1) / name for f in (folder, shrunken_grid))
        assert own.read_bytes() == forked.read_bytes(), f"{name}: own process and forked job differ"
    own, forked = (np.load(f / run_dir(method, 1) / "predictions.npz") for f in (folder, shrunken_grid))
    assert own.files == forked.files and all(np.array_equal(own[k], forked[k]) for k in own.files)


def test_a_second_dvc_repro_has_nothing_to_do(dvc_grid):
    folder, _ = dvc_grid
    again = run([*DVC, "repro"], folder)
    assert "Running stage" not in again.stdout
    assert "up to date" in run([*DVC, "status"], folder).stdout
    assert yaml.safe_load((folder / "dvc.lock").read_text())["stages"]["report"]


def test_domain_generalization_reuses_the_cross_dataset_source_scores_with_the_same_bytes(shrunken_grid, tmp_path):
    """The DG job takes the source's test set from the cross-dataset job of the same prompts (--reuse): scoring it
    again gives the same metrics bytes and predictions; predictions of other prompts or other images are refused."""
    method, source = "prompt_ot", "digits"
    dg, xd = (run_dir(method, 1, protocol, source) for protocol in ("domain_generalization", "cross_dataset"))
    folder = copy_workspace(shrunken_grid, tmp_path / "ws", dg, "mlflow.db", "mlartifacts")
    cmd = _stage_command(folder, f"evaluate_domain_generalization@{method}-{source}-1")
    at = cmd.index("--reuse")
    assert cmd[at + 1] == f"{xd}/predictions.npz"
    packed = grid_params().get("evaluate", {}).get("pack", False)  # the demo's: one job for the seeds (the log says)
    job = "packed" if packed else "seed1"
    log = shrunken_grid / "runs/logs/evaluate" / f"domain_generalization_{method}_{Path(dg).parent.name}_{job}.log"
    assert f"{source}: " in log.read_text() and f"(predictions from {xd}/predictions.npz)" in log.read_text()
    again = cmd[:at] + cmd[at + 2 :]  # the source scored again
    run([sys.executable, *again[1:]], folder, PROMPT_OT_FORKSERVER="", **MLFLOW_OFF)
    assert (folder / dg / "metrics.json").read_bytes() == (shrunken_grid / dg / "metrics.json").read_bytes()
    ours, grid = (np.load(f / dg / "predictions.npz") for f in (folder, shrunken_grid))
    assert ours.files == grid.files and all(np.array_equal(ours[k], grid[k]) for k in ours.files)
    assert str(grid["prompts_sha256"]) == sha256_file(shrunken_grid / xd / "prompts.safetensors")

    def refused(reuse: Path, words: tuple[str, ...]):
        before = (folder / dg / "metrics.json").read_bytes()
        bad = again[:at] + ["--reuse", str(reuse)] + again[at:]
        quiet = env(PROMPT_OT_FORKSERVER="", **MLFLOW_OFF)
        result = subprocess.run([sys.executable, *bad[1:]], cwd=folder, capture_output=True, text=True, env=quiet)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert all(w in result.stderr for w in words), result.stderr
        assert (folder / dg / "metrics.json").read_bytes() == before  # nothing written

    other_seed = shrunken_grid / run_dir(method, 2, "cross_dataset", source) / "predictions.npz"
    refused(other_seed, ("--reuse", "other prompts", "sha256"))
    arrays = {k: np.array(v) for k, v in np.load(shrunken_grid / xd / "predictions.npz").items()}
    arrays[f"{source}/labels"] = arrays[f"{source}/labels"][::-1].copy()
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, **arrays)
    refused(shuffled, ("--reuse", "not this test cache's"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    refused(junk, ("--reuse", "not a predictions file"))
    cut = tmp_path / "cut.npz"
    whole = (shrunken_grid / xd / "predictions.npz").read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    refused(cut, ("--reuse", "not a predictions file"))
