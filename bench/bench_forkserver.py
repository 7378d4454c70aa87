"""Benchmark: a pipeline job as its own process vs the same job forked from the fork server, side by side.

The job is a small real stage command that imports what every training and evaluation job imports (torch,
torchvision, open_clip): ``python -m prompt_ot smoke --method coop --epochs 1 --shots 1`` (train and evaluate
CoOp on the tiny CLIP and the digits for one epoch). Each repeat runs it once as its own process and once with
``PROMPT_OT_FORKSERVER`` naming a running server (``python -m prompt_ot forkserver``), alternately (A, B, A, B,
...) so that load on the machine affects both alike; the first pair warms the file cache and is not counted.
Both write ``prompts.safetensors``; the report says whether the two are byte-identical. Reports the median wall
time of each and their ratio, and the same for a job that imports nothing heavy (``validate``), whose time is
the client's own start. Writes reports/perf/forkserver.md.

    python bench/bench_forkserver.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, machine_lines, write_report  # noqa: E402

JOBS = {
    "smoke (train + evaluate CoOp, tiny CLIP, 1 epoch)": [
        "smoke",
        "--method",
        "coop",
        "--epochs",
        "1",
        "--shots",
        "1",
        "--out",
        "{out}",
    ],
    "validate (no heavy import)": ["validate", "--params", str(ROOT / "demo" / "params.yaml")],
}


def _env(extra: dict | None = None) -> dict:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    env.pop("PROMPT_OT_FORKSERVER", None)
    return env | (extra or {})


def _time(args: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "prompt_ot", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{args} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs per job (after one warm-up pair)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "perf" / "forkserver.md"))
    args = parser.parse_args(argv)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="bench_fork_"))
    socket_path, pidfile = work / "s.sock", work / "pid"
    server = subprocess.Popen(
        [sys.executable, "-m", "prompt_ot", "forkserver", "--socket", str(socket_path), "--pidfile", str(pidfile)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    rows = []
    try:
        while not pidfile.exists():
            if server.poll() is not None:
                raise SystemExit("the fork server did not start")
            time.sleep(0.1)
        for label, template in JOBS.items():
            times = {"own process": [], "forked": []}
            for k in range(args.repeats + 1):
                for side in times:
                    out = work / f"{side.replace(' ', '_')}_{k}"
                    job = [a.replace("{out}", str(out)) for a in template]
                    env = _env({"PROMPT_OT_FORKSERVER": str(socket_path)} if side == "forked" else None)
                    elapsed = _time(job, env, work)
                    if k:
                        times[side].append(elapsed)
            own, forked = statistics.median(times["own process"]), statistics.median(times["forked"])
            same = None
            if "{out}" in template:
                a, b = work / "own_process_1" / "prompts.safetensors", work / "forked_1" / "prompts.safetensors"
                same = a.read_bytes() == b.read_bytes()
            rows.append(
                {
                    "job": label,
                    "own_s": own,
                    "forked_s": forked,
                    "ratio": own / forked,
                    "same_output": same,
                    "own_all": times["own process"],
                    "forked_all": times["forked"],
                }
            )
            print(f"{label}: own process {own:.2f} s, forked {forked:.2f} s, {own / forked:.1f}x", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    command = "python bench/bench_forkserver.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = [
        "# Job start-up: own process vs forked from the fork server",
        "",
        "The same stage command run alternately as its own process and through `PROMPT_OT_FORKSERVER` (a fork of "
        "`python -m prompt_ot forkserver`, which imported torch, torchvision and open_clip once); wall time of the "
        "whole command as the workflow tools see it, median of the timed runs after one warm-up pair.",
        "",
        f"Command: `{command.strip()}`",
        "",
        *machine_lines(machine),
        "",
        "| job | own process | forked | speed-up | same prompts.safetensors bytes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        same = "-" if r["same_output"] is None else ("yes" if r["same_output"] else "NO")
        lines.append(f"| {r['job']} | {r['own_s']:.2f} s | {r['forked_s']:.2f} s | **{r['ratio']:.1f}x** | {same} |")
    lines += [
        "",
        "Raw times (s): "
        + "; ".join(
            f"{r['job']}: own {', '.join(f'{t:.2f}' for t in r['own_all'])} / forked "
            f"{', '.join(f'{t:.2f}' for t in r['forked_all'])}"
            for r in rows
        ),
        "",
        "```json",
        json.dumps({"machine": machine, "rows": rows}, indent=1),
        "```",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0 if all(r["same_output"] in (None, True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
