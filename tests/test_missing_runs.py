"""Runs deleted by hand, as a user does to retrain suspect runs or to free disk: rerunning the pipeline (Snakemake
and DVC) remakes exactly those runs and rewrites the report, and the report never drops them in silence."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.forkserver import FORKED
from tests.support.grid import SEEDS, grid_params, run_dir
from tests.support.workflow import (
    DVC,
    MLFLOW_OFF,
    PROMPT_OT,
    SNAKEMAKE,
    adopt_done_stages,
    copy_workspace,
    dvc_stage_names,
    env,
    files_of,
    make_workspace,
    run,
    tables_of,
)

pytestmark = pytest.mark.system

DELETED = ["maple", "promptsrc"]  # the two methods whose base-to-novel run folders the user deletes
FOLDERS = [f"runs/base2novel/{method}" for method in DELETED]
METRICS = "runs/base2novel/*/*/seed*/metrics.json"
PREDICTIONS = "runs/base2novel/*/*/seed*/predictions.npz"


def job_counts(output: str) -> dict[str, int]:
    """rule -> jobs, from the "Job stats" table of a Snakemake (dry) run."""
    counts, table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            table = True
        elif table and (match := re.fullmatch(r"(\w+)\s+(\d+)", line.strip())):
            counts[match.group(1)] = int(match.group(2))
        elif table and not line.strip() and counts:
            break
    counts.pop("total", None)
    return counts


def test_a_hand_run_report_of_the_deleted_runs_refuses_naming_them(shrunken_grid, tmp_path):
    folder = copy_workspace(shrunken_grid, tmp_path / "ws", *FOLDERS)
    result = subprocess.run(
        [*PROMPT_OT, "report", "--metrics-dir", "runs", "--published", "none", "--out", "reports"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env(**MLFLOW_OFF),
    )
    assert result.returncode == 2
    assert f"{len(DELETED) * len(SEEDS)} runs of the grid of" in result.stderr
    for method in DELETED:
        assert f"base2novel {method} on digits (8 shots): seed 1, 2" in result.stderr
    assert tables_of(folder) == tables_of(shrunken_grid)  # the old report is left as it was, not half-rewritten


def test_snakemake_remakes_exactly_the_deleted_runs_and_rewrites_the_report(shrunken_grid, tmp_path):
    folder = copy_workspace(shrunken_grid, tmp_path / "ws", *FOLDERS, "mlflow.db", "mlartifacts")
    snakemake = [*SNAKEMAKE, "--cores", "2", "--resources", "gpu=2"]
    planned = job_counts(run([*snakemake, "-n"], folder, **MLFLOW_OFF).stdout)
    runs = len(DELETED) * len(SEEDS)
    assert planned == {"all": 1, "train": runs, "evaluate_base2novel": runs, "report": 1}, planned
    run([*FORKED, *snakemake], folder, **MLFLOW_OFF)
    assert files_of(folder, METRICS) == files_of(shrunken_grid, METRICS)  # the same runs, to the byte
    assert files_of(folder, PREDICTIONS) == files_of(shrunken_grid, PREDICTIONS)
    for method in DELETED:
        for seed in SEEDS:
            assert (folder / run_dir(method, seed) / "prompts.safetensors").is_file()
    assert tables_of(folder) == tables_of(shrunken_grid)  # the report rewritten, with every run again
    assert "Nothing to be done" in run([*snakemake, "-n"], folder, **MLFLOW_OFF).stdout


def test_dvc_repro_remakes_exactly_the_deleted_runs_and_rewrites_the_report(shrunken_grid, tmp_path):
    """DVC brings deleted runs back from its cache when nothing they depend on changed (the same bytes a retraining
    gives, the runs being deterministic); forced, it retrains exactly those stages, and the report follows."""
    folder = make_workspace(tmp_path / "dvc", grid_params())
    for done in ("data", "runs", "cache", "reports"):
        shutil.copytree(shrunken_grid / done, folder / done, symlinks=True, dirs_exist_ok=True)
    adopt_done_stages(folder, redo=[])  # every stage taken as done, as after a finished `dvc repro`
    stages = [
        f"{kind}_base2novel@{method}-digits-{seed}"
        for kind in ("train", "evaluate")  # in the order --single-item runs them
        for method in DELETED
        for seed in SEEDS
    ]
    assert set(stages) <= set(dvc_stage_names(folder))

    def check_outputs():
        assert files_of(folder, METRICS) == files_of(shrunken_grid, METRICS)
        assert files_of(folder, PREDICTIONS) == files_of(shrunken_grid, PREDICTIONS)
        assert tables_of(folder) == tables_of(shrunken_grid)
        assert "Running stage" not in run([*DVC, "repro"], folder, **MLFLOW_OFF).stdout

    for name in FOLDERS:
        shutil.rmtree(folder / name)
    changed = run([*DVC, "status"], folder, **MLFLOW_OFF).stdout
    assert all(f"{stage}:" in changed for stage in stages) and "train_base2novel@cocoop" not in changed
    ran = set(re.findall(r"Running stage '([^']+)'", run([*FORKED, *DVC, "repro"], folder, **MLFLOW_OFF).stdout))
    assert ran <= {"report"}, sorted(ran)  # restored from the cache: nothing to run
    check_outputs()

    for name in FOLDERS:  # to retrain them: delete, then force exactly their stages
        shutil.rmtree(folder / name)
    forced = run([*FORKED, *DVC, "repro", "--force", "--single-item", *stages], folder, **MLFLOW_OFF)
    assert set(re.findall(r"Running stage '([^']+)'", forced.stdout)) == set(stages)
    again = run([*FORKED, *DVC, "repro"], folder, **MLFLOW_OFF)
    assert set(re.findall(r"Running stage '([^']+)'", again.stdout)) <= {"report"}
    check_outputs()
