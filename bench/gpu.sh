#!/usr/bin/env bash
# Unattended GPU measurements for the performance report, on a machine with one CUDA GPU and the project's
# environment (make setup), or PyTorch plus the wheels of bench/gpu_wheels.sh in .whl/; nothing is
# downloaded. Run from anywhere:
#
#   bash bench/gpu.sh            # everything (both parts below, one after the other)
#   bash bench/gpu.sh steps      # step throughput (packs of 1/3/8, 50/500 classes, sync check), evaluation
#                                # throughput and the 33-run projection; OT solvers on the GPU; this project's
#                                # step vs the reference step on the GPU; the gpu-marked tests
#   bash bench/gpu.sh complete   # one complete base-to-novel run, alone and with 3 seeds packed
#
# The parts may run in separate sessions (each is meant to fit a 10-minute job; neither has been timed on
# a GPU yet): reports/perf/gpu.md is rebuilt from the parts found (gpu.steps.json, gpu.complete.json).
# Writes reports/perf/gpu.md, ot_solvers.md, train_step_gpu.md and appends to gpu_run.log, each stamped
# with the date and the GPU's name; commit them. EPOCHS=10 shortens the complete run (the report states
# the epochs; the projection always prices the paper's 40).
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
case "$PART" in all|steps|complete) ;; *) echo "usage: bash bench/gpu.sh [all|steps|complete]" >&2; exit 2 ;; esac
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
if ! "$PY" -c "import open_clip, ot" 2>/dev/null; then
    # a GPU machine with PyTorch but not this project's environment: the wheels of bench/gpu_wheels.sh
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: $PY cannot import open_clip and ot (POT); run 'make setup', or bench/gpu_wheels.sh on a machine with PyPI and bring .whl/ along" >&2
        exit 2
    fi
    site=$(mktemp -d "${TMPDIR:-/tmp}/prompt_ot_site.XXXXXX")
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p reports/perf
log=reports/perf/gpu_run.log
{
    echo "# $(date -Is)  part $PART  $(hostname -s 2>/dev/null || true)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee -a "$log"
EPOCHS=${EPOCHS:-40}
"$PY" bench/bench_gpu.py --part "$PART" --epochs "$EPOCHS" 2>&1 | tee -a "$log"
if [ "$PART" != complete ]; then
    "$PY" bench/bench_ot.py --quick 2>&1 | tail -n 5 | tee -a "$log"
    "$PY" bench/bench_train_step.py --device cuda --repeats 10 --out reports/perf/train_step_gpu.md 2>&1 | tail -n 12 | tee -a "$log"
    echo "== the gpu-marked tests (sync-free step and OT, device views): pytest -m gpu" | tee -a "$log"
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_augment.py tests/test_losses.py tests/test_packing.py \
        tests/test_cache.py 2>&1 | tail -n 20 | tee -a "$log" || echo "some gpu tests FAILED (above)" | tee -a "$log"
fi
echo "done $(date -Is) (part $PART); reports in reports/perf/ (gpu.md, ot_solvers.md, train_step_gpu.md, gpu_run.log)" | tee -a "$log"
