"""The GPU benchmark script runs rarely, on borrowed GPU time, so its whole path is checked here on the CPU
with the tiny model: both parts, the report rebuilt from the parts found, and the skip without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--device", "cpu", "--backbone", "tiny-vit", "--epochs", "2", "--steps", "2", "--classes", "4", "8"]


def bench_gpu(*args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_gpu_benchmark_runs_in_parts_and_rebuilds_its_report_from_the_parts_found(tmp_path):
    out = tmp_path / "gpu.md"
    bench_gpu(*SMALL, "--part", "complete", "--out", str(out))
    report = out.read_text()
    assert "Not measured yet: run `bash bench/gpu.sh steps`" in report and "| 3 packed | 2 | " in report
    complete = json.loads((tmp_path / "gpu.complete.json").read_text())
    assert [row["runs"] for row in complete["full"]] == [1, 3]
    assert all(len(row["final_loss"]) == row["runs"] for row in complete["full"])

    bench_gpu(*SMALL, "--part", "steps", "--out", str(out))
    report = out.read_text()
    steps = json.loads((tmp_path / "gpu.steps.json").read_text())
    assert [(row["runs"], row["classes"]) for row in steps["steps"]] == [(1, 4), (3, 4), (8, 4), (1, 8), (3, 8), (8, 8)]
    assert all(row["step_s"] > 0 and row["sync_free"] == "not checked (CPU)" for row in steps["steps"])
    # both parts are in the report now, each with its own command and machine line
    assert "Not measured yet" not in report and report.count("Part `") == 2
    assert report.count("| **all 33 runs** |") == 2  # one run per process, and 3 seeds packed
    for proj in steps["projections"]:
        assert len(proj["rows"]) == 11 and proj["total_s"] == pytest.approx(
            sum(r["train_s"] + r["eval_s"] for r in proj["rows"])
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_the_gpu_benchmark_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.md"
    assert "skipped, no CUDA GPU here" in bench_gpu("--out", str(out))
    assert not out.exists()
