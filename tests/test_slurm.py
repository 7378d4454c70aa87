"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py: slurmctld, slurmd, slurmdbd on MariaDB, munge,
started here and stopped by pid), through `snakemake --profile` of a profile derived from the shipped
workflow/profiles/slurm with only the cluster's values changed.

- The crash tests' shrunken grid (tests/test_reliability.py: digits, CoOp and Prompt-OT, two seeds, a seeded random
  tiny-vit) runs as SLURM jobs: every job is
  COMPLETED in `sacct`, each training job asked for one GPU and trained with the CUDA_VISIBLE_DEVICES SLURM
  gave it (jobs running at once got different GPUs), and the metrics and prompts equal a local run's.
- A training job cancelled with `scancel` mid-run resumes from its checkpoint when the workflow is rerun, and
  ends with the uninterrupted run's metrics and prompts.
- On a cluster without accounting (no slurmdbd: `sacct` answers "accounting storage is disabled") the
  shipped profile's `squeue` status command lets a run finish. (It is the shipped default also because the
  plugin's `sacct` status never recognises SLURM's "CANCELLED by <uid>": with it, the cancelled job above
  would keep Snakemake waiting forever.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import Cluster, ClusterUnavailable, why_unavailable
from tests.test_reliability import EPOCHS, KILLED, METHODS, OFF, SEEDS, SHOTS, env, grid_params
from tests.workflow_helpers import ROOT, make_workspace

REASON = why_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

RUN = f"runs/base2novel/{{method}}/digits_{SHOTS}shot/seed{{seed}}"
GPU_RULES = {
    "backbone",
    "cache_test",
    "cache_train",
    "train",
    "evaluate_base2novel",
}  # the rules with `resources: gpu=1`
# what a cluster's administrator decides, and the values this one-node test cluster has instead
CLUSTER_VALUES = {"mem_mb": 1000, "cpus_per_task": 1, "runtime": 30}


def derived_profile(folder: Path, **settings) -> Path:
    """workflow/profiles/slurm with the cluster's values (memory, CPUs, runtime) set for this cluster, its first
    status check after 2 s instead of 40, and a short latency wait (one local file system)."""
    shipped = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    shipped["default-resources"].update(CLUSTER_VALUES)
    for resources in shipped.get("set-resources", {}).values():
        resources.update({k: v for k, v in CLUSTER_VALUES.items() if k in resources})
    shipped.update({"latency-wait": 5, "slurm-init-seconds-before-status-checks": 2, **settings})
    profile = folder / "test-profile"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "config.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    return profile


def snakemake_env() -> dict:
    # jobs inherit the submitting environment (sbatch --export=ALL), this interpreter first on PATH included;
    # MLflow off, as in the crash tests (each job saves its ~3 s)
    return env(**OFF)


def snakemake(folder: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *args]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=snakemake_env(), timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def outputs(folder: Path) -> dict[str, bytes]:
    files = sorted(folder.glob(f"runs/base2novel/*/digits_{SHOTS}shot/seed*/metrics.json"))
    files += sorted(folder.glob(f"runs/base2novel/*/digits_{SHOTS}shot/seed*/prompts.safetensors"))
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


def checkpoint_epoch(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.metadata()["epoch"])


def rule_of(job: dict) -> str:
    comment = job.get("Comment", "")  # the plugin's "rule_<name>_wildcards_<...>"
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def _running(folder: Path, accounting: bool):
    """A started cluster, stopped by pid when the class's tests end (whatever their outcome)."""
    cluster = Cluster(folder, accounting=accounting)
    try:
        cluster.start()
    except (ClusterUnavailable, RuntimeError, subprocess.SubprocessError) as error:
        pytest.skip(f"SLURM test cluster did not start: {str(error).splitlines()[0]}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="class")
def cluster(tmp_path_factory):
    """A cluster with accounting (slurmdbd on MariaDB)."""
    yield from _running(tmp_path_factory.mktemp("slurm"), accounting=True)


@pytest.fixture(scope="class")
def cluster_without_accounting(tmp_path_factory):
    yield from _running(tmp_path_factory.mktemp("slurm-noacct"), accounting=False)


@pytest.fixture(scope="class")
def grid(cluster, tmp_path_factory):
    """The grid run once through SLURM: (workspace, profile, the sacct records of its jobs)."""
    folder = make_workspace(tmp_path_factory.mktemp("grid") / "ws", grid_params(defer=False))
    profile = derived_profile(folder.parent)
    before = {j["JobID"] for j in cluster.sacct()}
    result = snakemake(folder, "--profile", str(profile), check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{cluster.logs()}"
    jobs = [j for j in cluster.sacct() if j["JobID"] not in before]
    return folder, profile, jobs


class TestWithAccounting:
    def test_every_job_completes_and_training_gets_its_gpu(self, grid):
        folder, _, jobs = grid
        assert jobs and all(j["State"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs
        rules = sorted(rule_of(j) for j in jobs)
        assert rules.count("train") == len(METHODS) * len(SEEDS)
        assert rules.count("evaluate_base2novel") == len(METHODS) * len(SEEDS)
        for name in ("download", "cache_test", "report"):
            assert rules.count(name) == 1, rules
        for job in jobs:  # the jobs that run the model ask for (and get) one GPU; the others none
            assert ("gres/gpu=1" in job["AllocTRES"]) == (rule_of(job) in GPU_RULES), job
        by_id = {j["JobID"]: j for j in jobs}
        seen = []
        for method in METHODS:
            for seed in SEEDS:
                given = json.loads((folder / RUN.format(method=method, seed=seed) / "train.json").read_text())[
                    "scheduler"
                ]
                job = by_id[given["slurm_job_id"]]  # the training ran inside a job of this grid
                assert rule_of(job) == "train"
                assert given["cuda_visible_devices"] in {"0", "1"}
                assert given["cuda_visible_devices"] == given["slurm_step_gpus"], (
                    given
                )  # what the job saw is what SLURM gave
                seen.append((job["Start"], job["End"], given["cuda_visible_devices"]))
        for a in seen:  # jobs on the node at the same time were given different GPUs
            for b in seen:
                if a is not b and a[0] < b[1] and b[0] < a[1]:
                    assert a[2] != b[2], (a, b)

    def test_metrics_equal_a_local_run(self, grid, tmp_path):
        folder, _, _ = grid
        local = tmp_path / "local"
        shutil.copytree(folder, local, symlinks=True)
        shutil.rmtree(local / "runs" / "base2novel")  # every train and evaluate job runs again, on this machine
        ours = outputs(folder)
        metrics = [name for name in ours if name.endswith("metrics.json")]
        snakemake(local, *metrics, "--cores", "2", "--resources", "gpu=2")
        theirs = outputs(local)
        assert len(ours) == 2 * len(METHODS) * len(SEEDS)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name] == theirs[name], f"{name} differs between SLURM and the local run"

    def test_a_training_job_cancelled_mid_run_resumes_to_the_same_result(self, grid, cluster):
        folder, profile, _ = grid
        run = folder / KILLED
        uninterrupted = outputs(folder)
        shutil.rmtree(run)
        target = f"{KILLED}/metrics.json"  # the run's jobs again (the tables, already built, would hide them)
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", target, "--profile", str(profile)],
            cwd=folder,
            env=snakemake_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            job_id = None
            deadline = time.monotonic() + 300
            while not (run / "checkpoint.safetensors").exists():  # the first epoch is done
                assert proc.poll() is None, proc.stdout.read()[-4000:]
                assert time.monotonic() < deadline, "the training job did not write its checkpoint"
                time.sleep(0.05)
            for line in cluster.run("squeue", "-h", "-o", "%i|%k").stdout.splitlines():
                ident, comment = line.split("|", 1)
                if (
                    comment == f"rule_train_wildcards_base2novel_prompt_ot_digits_{SHOTS}_1"
                ):  # protocol, method, dataset, shots, seed
                    job_id = ident
            assert job_id, cluster.run("squeue", "-h", "-o", "%i|%k").stdout
            cluster.run("scancel", job_id)
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0, "the workflow should fail with its training job cancelled"
        state = {j["JobID"]: j["State"] for j in cluster.sacct()}[job_id]
        assert state.startswith("CANCELLED"), state
        assert not (run / "prompts.safetensors").exists(), "Snakemake keeps no output of a failed job"
        stopped_after = checkpoint_epoch(run / "checkpoint.safetensors")
        assert 1 <= stopped_after < EPOCHS, f"the job was cancelled after epoch {stopped_after} of {EPOCHS}"
        snakemake(folder, target, "--profile", str(profile))
        summary = json.loads((run / "train.json").read_text())
        assert summary["resumed_from_epoch"] == stopped_after
        assert outputs(folder) == uninterrupted


class TestWithoutAccounting:
    def test_the_squeue_status_command_finishes_a_run(self, cluster_without_accounting, tmp_path):
        cluster = cluster_without_accounting
        refused = cluster.run("sacct", "-n", check=False)
        assert "accounting storage is disabled" in (refused.stdout + refused.stderr).lower()
        folder = make_workspace(tmp_path / "ws", grid_params(defer=False))
        profile = derived_profile(tmp_path)
        assert yaml.safe_load((profile / "config.yaml").read_text())["slurm-status-command"] == "squeue"
        target = f"runs/manifests/digits/base_{SHOTS}shot_seed1.json"
        result = snakemake(folder, "--profile", str(profile), target, check=False, timeout=600)
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{cluster.logs()}"
        assert json.loads((folder / target).read_text())
