#!/usr/bin/env bash
# Unattended GPU measurements for the performance report. Run from anywhere on a machine with one CUDA GPU
# and the project's environment (make setup); nothing is downloaded. Takes about 10 minutes on an H200.
# Writes reports/perf/gpu.md (step throughput, one complete base-to-novel run with and without packing,
# the 33-run projection), reports/perf/ot_solvers.md (OT solvers on the CPU and the GPU) and
# reports/perf/train_step.md (this project's step vs the reference step, on the GPU), each stamped with the
# date and the GPU's name; commit them. EPOCHS=10 bash bench/gpu.sh shortens the complete run (the
# report states the epochs; the projection always prices the paper's 40).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
mkdir -p reports/perf
log=reports/perf/gpu_run.log
{
    echo "# $(date -Is)  $(hostname -s 2>/dev/null || true)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee "$log"
EPOCHS=${EPOCHS:-40}
"$PY" bench/bench_gpu.py --epochs "$EPOCHS" 2>&1 | tee -a "$log"
"$PY" bench/bench_ot.py --quick 2>&1 | tail -n 5 | tee -a "$log"
"$PY" bench/bench_train_step.py --device cuda --repeats 10 --out reports/perf/train_step_gpu.md 2>&1 | tail -n 12 | tee -a "$log"
echo "done $(date -Is); reports in reports/perf/ (gpu.md, ot_solvers.md, train_step_gpu.md, gpu_run.log)" | tee -a "$log"
