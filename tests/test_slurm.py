"""The pipeline on a real SLURM cluster (tests/support/slurm_cluster.py: slurmctld, slurmd, slurmdbd on MariaDB,
munge, started here and stopped by pid), through `snakemake --profile` of a profile derived from the shipped
workflow/profiles/slurm with only the cluster's values changed.

- The session grid's configuration (tests/support/grid.py: the digits, 8 shots, 12 epochs, two seeds) with Prompt-OT
  alone and a seeded random tiny CLIP (no pretraining) runs from scratch as SLURM jobs: every job is COMPLETED in
  `sacct`, each job that runs the model asked for one GPU, each training job trained with the CUDA_VISIBLE_DEVICES
  SLURM gave it (jobs running at once got different GPUs), and the metrics and prompts equal a local run's. Each job
  runs as a fork of a fork server on the node (the test cluster's one node is this machine), as `make demo` runs
  its jobs: SLURM starts, tracks and cancels the job's own process, the client (tests/test_forkserver.py shows a
  job's fork ending with it); test_e2e.py shows a forked job writing what its own process writes.
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
import time
from pathlib import Path

import pytest
import yaml

from tests.support.forkserver import fork_server
from tests.support.grid import BASE2NOVEL_ONLY, EPOCHS, KILLED, SEEDS, SHOTS, grid_params
from tests.support.slurm_cluster import Cluster, ClusterUnavailable, why_unavailable
from tests.support.workflow import MLFLOW_OFF, ROOT, SNAKEMAKE, copy_workspace, env, files_of, make_workspace

REASON = why_unavailable()
pytestmark = [pytest.mark.system, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
METHODS = ["prompt_ot"]

RUN = f"runs/base2novel/{{method}}/digits_{SHOTS}shot/seed{{seed}}"
GPU_RULES = {"backbone", "cache_test", "cache_train", "train", "evaluate_base2novel"}  # `resources: gpu=1`
# what a cluster's administrator decides, and the values this one-node test cluster has instead
CLUSTER_VALUES = {"mem_mb": 1000, "cpus_per_task": 1, "runtime": 30}


def derived_profile(folder: Path, **settings) -> Path:
    """workflow/profiles/slurm with the cluster's values (memory, CPUs, runtime) set for this cluster, its first
    status check after 15 s instead of 40 (a forked job with SLURM's start takes 3-12 s here, on 2 busy cores; the
    plugin then waits 10 s longer after every check that finds no job finished), and a short latency wait (one local
    file system)."""
    shipped = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    shipped["default-resources"].update(CLUSTER_VALUES)
    for resources in shipped.get("set-resources", {}).values():
        resources.update({k: v for k, v in CLUSTER_VALUES.items() if k in resources})
    shipped.update({"latency-wait": 5, "slurm-init-seconds-before-status-checks": 15, **settings})
    profile = folder / "test-profile"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "config.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    return profile


def snakemake_env(forks: Path | None = None) -> dict:
    # jobs inherit the submitting environment (sbatch --export=ALL), this interpreter first on PATH included, and
    # the fork server's socket when one is given; MLflow off, as in the crash tests (each job saves its ~3 s)
    return env(**MLFLOW_OFF, **({"PROMPT_OT_FORKSERVER": str(forks)} if forks else {}))


def snakemake(folder: Path, *args: str, forks: Path | None = None, check: bool = True, timeout: float = 900):
    cmd = [*SNAKEMAKE, *args]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=snakemake_env(forks), timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def outputs(folder: Path, methods=METHODS) -> dict[str, bytes]:
    files = {}
    for method in methods:
        for name in ("metrics.json", "prompts.safetensors"):
            files |= files_of(folder, RUN.format(method=method, seed="*") + "/" + name)
    return files


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


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    """A fork server the jobs of this module's workflows are forked from (its socket)."""
    with fork_server(tmp_path_factory.mktemp("fork")) as (socket_path, _):
        yield socket_path


@pytest.fixture(scope="class")
def cluster_without_accounting(tmp_path_factory):
    yield from _running(tmp_path_factory.mktemp("slurm-noacct"), accounting=False)


def slurm_params() -> dict:
    """The session grid's params (tests/support/grid.py) with a seeded random tiny CLIP instead of the pretrained one
    (no pretraining: SLURM is the point here) and Prompt-OT alone: every rule of the pipeline has a job, all short."""
    return grid_params(
        backbone={"name": "tiny-vit", "pretrained": "none"}, pretrain={}, methods=METHODS, **BASE2NOVEL_ONLY
    )


@pytest.fixture(scope="class")
def grid(cluster, forks, tmp_path_factory):
    """The grid run once through SLURM from scratch: (workspace, profile, the sacct records of its jobs)."""
    folder = make_workspace(tmp_path_factory.mktemp("grid") / "ws", slurm_params())
    profile = derived_profile(folder.parent)
    before = {j["JobID"] for j in cluster.sacct()}
    result = snakemake(folder, "--profile", str(profile), forks=forks, check=False)
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
        for name in ("download", "backbone", "cache_test", "report"):
            assert rules.count(name) == 1, rules
        assert rules.count("split") == rules.count("cache_train") == len(SEEDS), rules
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

    def test_metrics_equal_a_local_run(self, grid, forks, tmp_path):
        folder, _, _ = grid
        local = copy_workspace(folder, tmp_path / "local", "runs/base2novel")  # train and evaluate here again
        ours = outputs(folder)
        metrics = [name for name in ours if name.endswith("metrics.json")]
        snakemake(local, *metrics, "--cores", "2", "--resources", "gpu=2", forks=forks)
        theirs = outputs(local)
        assert len(ours) == 2 * len(METHODS) * len(SEEDS)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name] == theirs[name], f"{name} differs between SLURM and the local run"

    def test_a_training_job_cancelled_mid_run_resumes_to_the_same_result(self, grid, cluster, forks):
        folder, profile, _ = grid
        run = folder / KILLED
        uninterrupted = outputs(folder)
        shutil.rmtree(run)
        target = f"{KILLED}/metrics.json"  # the run's jobs again (the tables, already built, would hide them)
        proc = subprocess.Popen(
            [*SNAKEMAKE, target, "--profile", str(profile)],
            cwd=folder,
            env=snakemake_env(forks),
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
        snakemake(folder, target, "--profile", str(profile), forks=forks)
        summary = json.loads((run / "train.json").read_text())
        assert summary["resumed_from_epoch"] == stopped_after
        assert outputs(folder) == uninterrupted


class TestWithoutAccounting:
    def test_the_squeue_status_command_finishes_a_run(self, cluster_without_accounting, tmp_path):
        cluster = cluster_without_accounting
        refused = cluster.run("sacct", "-n", check=False)
        assert "accounting storage is disabled" in (refused.stdout + refused.stderr).lower()
        folder = make_workspace(tmp_path / "ws", slurm_params())
        profile = derived_profile(tmp_path)
        assert yaml.safe_load((profile / "config.yaml").read_text())["slurm-status-command"] == "squeue"
        target = f"runs/manifests/digits/base_{SHOTS}shot_seed1.json"  # the download and split jobs
        result = snakemake(folder, "--profile", str(profile), target, check=False, timeout=600)
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{cluster.logs()}"
        assert json.loads((folder / target).read_text())
