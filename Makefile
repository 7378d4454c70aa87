# Set-up and entry points. Every target creates the virtual environment first if it is missing.
#   make demo   the main job (for now the CPU smoke run of the trainer)
#   make test   the default test suite (CPU, offline)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1

.PHONY: setup demo smoke test test-all bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: smoke

smoke: setup
	$(PY) -m prompt_ot smoke --method prompt_ot --epochs 3 --out smoke_out

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: setup
	$(PY) -m pytest -q

clean:
	rm -rf smoke_out .pytest_cache
