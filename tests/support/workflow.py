"""Workspaces for the pipeline tests: a copy of the pipeline in a fresh git + DVC folder, the tools run in it, and
its results read back; plus the Snakemake and DVC pipelines expanded into comparable job lists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "workflow")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DVC = [sys.executable, "-m", "dvc"]
PROMPT_OT = [sys.executable, "-m", "prompt_ot"]
MLFLOW_OFF = {"PROMPT_OT_MLFLOW": "off"}  # for tests not about MLflow: each job saves its ~3 s


def make_workspace(dest: Path, params: dict | str | None = None) -> Path:
    """A copy of the pipeline definition in a fresh git + DVC folder, with ``params`` (a dict or YAML text) as its
    params.yaml, or the project's."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=False, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / name)
    (dest / "reports").mkdir(exist_ok=True)
    shutil.copytree(ROOT / "reports" / "published", dest / "reports" / "published", dirs_exist_ok=True)
    if params is not None:
        write_params(dest, params)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=dest, check=True, env=quiet_env())
    return dest


def write_params(folder: Path, params: dict | str) -> None:
    text = params if isinstance(params, str) else yaml.safe_dump(params, sort_keys=False)
    (folder / "params.yaml").write_text(text)


def copy_workspace(source: Path, dest: Path, *remove: str) -> Path:
    """A copy of a finished workspace (file times kept, so the tools see what is up to date) with some results
    removed, so that the pipeline redoes exactly those and what depends on them."""
    shutil.copytree(source, dest, symlinks=True)
    for name in remove:
        path = dest / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return dest


def quiet_env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def env(**extra) -> dict:
    """The environment of a pipeline run: offline, telemetry off, this interpreter first on PATH (the jobs'
    ``python``), each workspace's own mlflow.db unless MLFLOW_TRACKING_URI is given in ``extra``."""
    result = quiet_env() | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)} | extra
    result["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), result.get("PATH", "")])
    if not result.get("MLFLOW_TRACKING_URI"):
        result.pop("MLFLOW_TRACKING_URI", None)
    return result


def run(cmd, cwd, timeout: float = 900, **extra_env) -> subprocess.CompletedProcess:
    """Run a command in a workspace; a failure shows the end of its output."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(**extra_env), timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def files_of(folder: Path, pattern: str) -> dict[str, bytes]:
    """Relative path -> bytes of the files matching ``pattern`` under ``folder``."""
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.glob(pattern)) if f.is_file()}


def tables_of(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((folder / "reports/tables").glob("*.csv"))}


def summary(folder: Path, run_dir: str) -> dict:
    """A run's train.json."""
    return json.loads((folder / run_dir / "train.json").read_text())


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_bytes(client, run_id: str, path: str, dest: Path) -> bytes:
    return Path(client.download_artifacts(run_id, path, str(dest))).read_bytes()


def dvc_stage_names(folder: Path) -> list[str]:
    """The stage names ``folder/dvc.yaml`` expands to for its params (not those of a dvc.yaml above it, which DVC
    also sees from a sub-folder such as demo/)."""
    code = "import json; from dvc.repo import Repo; print(json.dumps([s.addressing for s in Repo('.').index.stages]))"
    return [name for name in json.loads(run([sys.executable, "-c", code], folder).stdout) if "/" not in name]


def adopt_done_stages(folder: Path, redo: list[str]) -> None:
    """Make DVC take the stages whose outputs a Snakemake run left in ``folder`` as done (as if an earlier
    ``dvc repro`` had run them), all but ``redo``, so that ``dvc repro`` runs only those."""
    run([*DVC, "repro", "dvc.yaml:validate"], folder, **MLFLOW_OFF)  # DVC's first stage (Snakemake's is its start)
    done = [name for name in dvc_stage_names(folder) if name not in redo and name != "validate"]
    run([*DVC, "commit", "--force", *done], folder, **MLFLOW_OFF)


def _normalise(cmd: str) -> str:
    cmd = re.sub(r"\s+>\s*\S+\s+2>&1\s*$", "", cmd.strip())  # Snakemake's redirect into the rule's log
    return " ".join(cmd.split())


def snakemake_jobs(folder: Path) -> dict[str, set[str]]:
    """command -> outputs, from a forced dry run."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "1"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=quiet_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs: dict[str, set[str]] = {}
    outputs: set[str] = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            outputs = {o.strip() for o in line[len("output:") :].split(",")}
        elif line.startswith("Shell command:"):
            cmd = line[len("Shell command:") :].strip()
            if cmd != "None":
                jobs[_normalise(cmd)] = outputs
            outputs = set()
    return jobs


def dvc_jobs(folder: Path) -> dict[str, set[str]]:
    code = (
        "import json; from dvc.repo import Repo; r = Repo('.');"
        "print(json.dumps({s.cmd: [str(o.def_path) for o in s.outs] for s in r.index.stages}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, env=quiet_env())
    assert result.returncode == 0, result.stderr
    import json

    # DVC's first stage validates params.yaml before any interpolated command runs; Snakemake does the
    # same when it reads the Snakefile, so that stage has no Snakemake job to match
    return {
        _normalise(cmd): set(outs)
        for cmd, outs in json.loads(result.stdout).items()
        if not cmd.startswith("python -m prompt_ot validate ")
    }
