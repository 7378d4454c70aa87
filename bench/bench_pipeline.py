"""Benchmark: pipeline overhead on the full paper grid (root params.yaml): Snakemake's dry run, `dvc status`.

Copies the pipeline definition (Snakefile, dvc.yaml, params.yaml, workflow/, reports/published) into a
fresh git + DVC initialised temporary folder, as the workflow tests do, then times, several repeats each
(wall seconds, median and min; the first, cold, run is included and also listed):

- ``snakemake -n --quiet rules --cores 1``: Snakemake parses the Snakefile and builds the DAG of every
  job of the grid (dry run; ``--quiet rules`` prints only the job counts, which give the jobs expanded);
- ``dvc status``: DVC expands dvc.yaml's matrices and checks every stage;
- ``dvc repro --dry --ignore-errors``: DVC's dry reproduction over every stage (plain ``dvc repro --dry``
  stops at the first stage whose input file is missing, which without data is the second stage);
  skipped if its first run takes longer than --repro-limit seconds.

No data exists in that folder, so ``dvc status`` lists every stage as changed (outputs deleted,
dependencies missing) and Snakemake plans every job: this measures the tools' own overhead on the
grid's size, not a check of real files. Writes reports/perf/pipeline.md.

    python bench/bench_pipeline.py [--repeats 5] [--repro-repeats 3] [--repro-limit 300]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, write_report  # noqa: E402

from tests.support.workflow import make_workspace, quiet_env  # noqa: E402

SNAKEMAKE = ["snakemake", "-n", "--quiet", "rules", "--cores", "1"]
DVC_STATUS = ["dvc", "status"]
DVC_REPRO = ["dvc", "repro", "--dry", "--ignore-errors"]


def command_line(args: list[str]) -> list[str]:
    """The tool's command, run with this interpreter's installation (``python -m snakemake`` / ``-m dvc``)."""
    return [sys.executable, "-m", args[0], *args[1:]]


def run_timed(args: list[str], folder: Path, timeout: float) -> tuple[float, subprocess.CompletedProcess | None]:
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command_line(args), cwd=folder, capture_output=True, text=True, env=quiet_env(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, None
    return time.perf_counter() - start, result


def snakemake_jobs(stdout: str) -> dict[str, int]:
    """The job-count table that ``--quiet rules`` prints: rule -> count (and 'total')."""
    counts = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"\s*([A-Za-z_][\w]*)\s+(\d+)\s*", line)
        if match and match.group(1) not in ("job", "count"):
            counts[match.group(1)] = int(match.group(2))
    return counts


def dvc_status_stages(stdout: str) -> int:
    """Stages that ``dvc status`` lists (a line 'stage:' at column 0 each)."""
    return sum(1 for line in stdout.splitlines() if line and not line[0].isspace() and line.endswith(":"))


def summary(times: list[float]) -> dict:
    return {
        "median_s": round(float(np.median(times)), 3),
        "min_s": round(min(times), 3),
        "first_s": round(times[0], 3),
        "all_s": [round(t, 3) for t in times],
    }


def repeat_timed(args: list[str], folder: Path, repeats: int) -> tuple[list[float], subprocess.CompletedProcess]:
    """The seconds of ``repeats`` runs of ``args`` in ``folder``, each of which must succeed, and the last run."""
    times, last = [], None
    for _ in range(repeats):
        seconds, last = run_timed(args, folder, 600)
        assert last is not None and last.returncode == 0, (last.stdout + last.stderr) if last else "timed out"
        times.append(seconds)
    return times, last


def bench(folder: Path, repeats: int, repro_repeats: int, repro_limit: float) -> dict:
    results: dict = {}

    times, last = repeat_timed(SNAKEMAKE, folder, repeats)
    jobs = snakemake_jobs(last.stdout)
    results["snakemake_dry_run"] = {
        "command": shlex.join(SNAKEMAKE),
        **summary(times),
        "jobs": jobs.get("total"),
        "jobs_per_rule": jobs,
    }
    print(
        f"snakemake -n: median {np.median(times):.2f} s, min {min(times):.2f} s, {jobs.get('total')} jobs", flush=True
    )

    stage_list = subprocess.run(
        command_line(["dvc", "stage", "list"]), cwd=folder, capture_output=True, text=True, env=quiet_env(), check=True
    )
    dvc_stages = sum(1 for line in stage_list.stdout.splitlines() if line.strip())

    times, last = repeat_timed(DVC_STATUS, folder, repeats)
    listed = dvc_status_stages(last.stdout)
    results["dvc_status"] = {
        "command": shlex.join(DVC_STATUS),
        **summary(times),
        "stages": dvc_stages,
        "stages_listed_as_changed": listed,
        "deleted_outputs": last.stdout.count("deleted:"),
    }
    print(
        f"dvc status: median {np.median(times):.2f} s, min {min(times):.2f} s, {dvc_stages} stages, "
        f"{listed} listed as changed",
        flush=True,
    )

    times, skipped = [], None
    for _ in range(repro_repeats):
        seconds, last = run_timed(DVC_REPRO, folder, repro_limit)
        if last is None:
            skipped = f"the first run did not finish within {repro_limit:.0f} s"
            break
        times.append(seconds)
        if seconds > repro_limit:
            skipped = f"one run took {seconds:.0f} s (> {repro_limit:.0f} s): no more repeats"
            break
    if times:
        output = last.stdout + last.stderr
        ran = len(re.findall(r"^Running stage '", output, flags=re.M))
        # with --ignore-errors each stage that cannot start leaves one "... (ignored)" warning
        ignored = len(re.findall(r"\(ignored\)\s*$", output, flags=re.M))
        results["dvc_repro_dry"] = {
            "command": shlex.join(DVC_REPRO),
            **summary(times),
            "skipped": skipped,
            "returncode": last.returncode,
            "stages_dry_run": ran,
            "stages_failed_missing_inputs": ignored,
        }
        print(
            f"dvc repro --dry: median {np.median(times):.2f} s, min {min(times):.2f} s, {ran} stages dry-run",
            flush=True,
        )
    else:
        results["dvc_repro_dry"] = {"command": shlex.join(DVC_REPRO), "skipped": skipped}
        print(f"dvc repro --dry: skipped ({skipped})", flush=True)
    return results


def report(result: dict) -> str:
    m, r = result["machine"], result["results"]
    sm, st, rp = r["snakemake_dry_run"], r["dvc_status"], r["dvc_repro_dry"]
    rules = ", ".join(f"{k} {v}" for k, v in sm["jobs_per_rule"].items() if k != "total")

    def row(name: str, entry: dict, what: str) -> str:
        if "median_s" not in entry:
            return f"| `{entry['command']}` | skipped: {entry['skipped']} | | | | {what} |"
        return (
            f"| `{entry['command']}` | {len(entry['all_s'])} | {entry['median_s']} | {entry['min_s']} | "
            f"{entry['first_s']} | {what} |"
        )

    repro_what = (
        "skipped"
        if "median_s" not in rp
        else f"{rp['stages_dry_run']} stages dry-run, {rp['stages_failed_missing_inputs']} stopped on a "
        f"missing input file and ignored (exit status {rp['returncode']})"
    )
    return f"""# Pipeline overhead on the full paper grid

Command: `{result["command"]}`

Date: {m["date"]}. Machine: {m["cpu"]}, {m["cores"]} cores ({m["platform"]}), Python {m["python"]},
Snakemake {m["snakemake"]}, DVC {m["dvc"]}, GPU: {m["gpu"] or "none"}. Load average
{m["load_average_at_start"][0]} at start: a 2-core machine shared with other agents' test runs, so these
wall times include that contention.

The grid is the root `params.yaml` (the paper's: 15 datasets, 8 methods, 3 seeds, base-to-novel,
cross-dataset and domain generalisation). The pipeline definition (Snakefile, dvc.yaml, params.yaml,
workflow/, reports/published) is copied into a fresh git + DVC initialised temporary folder
(`tests/workflow_helpers.make_workspace`), and each command runs there as
`python -m snakemake ...` / `python -m dvc ...` with the project's interpreter, one after the other,
repeats in the same folder (the first, cold, run is included and listed as "first").

**No data exists in that folder**: Snakemake plans every job of the grid, `dvc status` lists every stage
as changed (outputs deleted, dependencies missing), and `dvc repro --dry` can dry-run only the stages
whose inputs need no earlier output (plain `dvc repro --dry` stops at the first missing input, the
`backbone` stage, so `--ignore-errors` is used to have it visit the whole grid). The figures are the
tools' overhead on a grid of this size, not a check of real files.

| command | repeats | median s | min s | first s | what it covered |
|---|---:|---:|---:|---:|---|
{row("snakemake", sm, f"{sm['jobs']} jobs expanded ({rules})")}
{row("dvc status", st, f"{st['stages']} stages (`dvc stage list`), {st['stages_listed_as_changed']} listed as changed")}
{row("dvc repro", rp, repro_what)}

```json
{json.dumps(result, indent=1)}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of snakemake -n and of dvc status")
    parser.add_argument("--repro-repeats", type=int, default=3, help="runs of dvc repro --dry (0: skip it)")
    parser.add_argument(
        "--repro-limit",
        type=float,
        default=300.0,
        help="seconds after which dvc repro --dry is stopped and reported as skipped",
    )
    parser.add_argument("--out", default="reports/perf/pipeline.md")
    args = parser.parse_args(argv)
    machine = machine_info(("snakemake", "dvc"))
    print(
        f"{machine['date']}: {machine['cpu']}, {machine['cores']} cores, Snakemake {machine['snakemake']}, "
        f"DVC {machine['dvc']}, load {machine['load_average_at_start'][0]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_workspace(Path(tmp) / "pipeline")
        results = bench(folder, args.repeats, args.repro_repeats, args.repro_limit)
    result = {
        "command": f"python bench/bench_pipeline.py {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
        "params": "params.yaml (the paper grid)",
        "machine": machine,
        "results": results,
    }
    write_report(args.out, report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
