#!/usr/bin/env bash
# Wheels for running bench/gpu.sh on a GPU machine that has PyTorch (and torchvision, NumPy, SciPy,
# safetensors, timm, huggingface_hub, regex, tqdm, PyYAML, Pillow) but no network and none of this
# project's environment: downloads, on a machine with PyPI, the few packages the benchmark still needs,
# at the versions of requirements.lock, into .whl/ (git-ignored). Copy the tree with .whl/ to the GPU
# machine; bench/gpu.sh installs them into a temporary folder when it cannot import them.
#
#   bash bench/gpu_wheels.sh [python version of the GPU machine, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
pins=()
for name in open_clip_torch POT ftfy wcwidth; do
    pin=$(grep -i -E "^${name}==" requirements.lock) || { echo "error: $name is not pinned in requirements.lock" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls -l .whl
