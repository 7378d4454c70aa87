"""Expand the Snakemake and DVC pipelines of a project folder into comparable job lists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "workflow")


def make_workspace(dest: Path, params_text: str | None = None) -> Path:
    """A copy of the pipeline definition (and optionally other params) in a fresh DVC-initialised folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=False, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / name)
    (dest / "reports").mkdir(exist_ok=True)
    shutil.copytree(ROOT / "reports" / "published", dest / "reports" / "published", dirs_exist_ok=True)
    if params_text is not None:
        (dest / "params.yaml").write_text(params_text)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True, env=quiet_env())
    return dest


def quiet_env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


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
