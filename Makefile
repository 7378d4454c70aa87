# Set-up and entry points. Every target creates the virtual environment first if it is missing.
#   make system-deps  Debian packages: the demo's image data, TeX for the paper, SLURM for the cluster tests (root)
#   make setup        the virtual environment (.venv) with the pinned packages of requirements.lock
#   make demo         the main job: the offline demo, the whole pipeline on the CPU (demo/params.yaml)
#   make test         every test that runs without a GPU (what CI runs, after make lint)
#   make test-fast    all but the system tests (services, whole pipelines): the edit-test loop
#   make lint         ruff: lint and format check
#   make paper        reports/paper.tex around the demo's tables, compiled into demo/reports/paper.pdf (pdflatex)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
CORES ?= 2
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: system-deps setup demo demo-data paper smoke test test-fast test-all lint bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.lock
	@# byte-compile on all cores rather than one file after another as pip does; like pip, files that do not compile
	@# on this Python (a few tests written for newer ones) are skipped
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Debian's packages that parts of the project use; each is optional (what is missing is downloaded instead, or its
# tests skip with one line): the demo's image data, TeX and pdftotext for `make paper` and its tests, and a one-node
# SLURM cluster (slurmctld, slurmd, slurmdbd on MariaDB, munge) that tests/test_slurm.py starts and stops itself
DEBIAN_PACKAGES := dataset-fashion-mnist openclipart-png texlive-latex-base texlive-latex-recommended poppler-utils \
	slurm-wlm slurmdbd munge mariadb-server mariadb-client
system-deps:
	@if ! command -v apt-get >/dev/null; then echo "system-deps: no apt-get here; install the equivalents of: $(DEBIAN_PACKAGES)"; \
	elif [ "$$(id -u)" != 0 ]; then echo "system-deps: run as root (sudo make system-deps)" >&2; exit 1; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(DEBIAN_PACKAGES) >/dev/null && echo "system-deps: installed $(DEBIAN_PACKAGES)"; fi

# the demo's images from Debian when apt is usable: Fashion-MNIST (else the recipe falls back to torchvision's
# download) and the clip art (no other source: the clipart stage then says what to install)
CLIPART := /usr/share/openclipart/png
demo-data:
	@if { [ ! -d $(FASHION_MNIST) ] || [ ! -d $(CLIPART) ]; } && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; \
	then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist openclipart-png >/dev/null || true; fi

# every job of the demo starts as a fork of one process that has imported torch and open_clip (prompt_ot/forkserver.py;
# the same results as jobs in their own processes, seconds sooner each); the greedy scheduler, since under Snakemake's
# default (an integer program over every waiting job, solved each time a job ends) Snakemake itself took a fifth of
# the demo's CPU (docs/demo.md)
demo: setup demo-data
	cd demo && $(abspath $(PY)) -m prompt_ot forkserver -- snakemake -s ../Snakefile --cores $(CORES) \
		--resources gpu=$(CORES) --scheduler greedy --rerun-incomplete --quiet rules
	@echo
	@$(PY) -m prompt_ot.report.headline demo/reports
	@echo
	@echo "Tables (LaTeX, CSV, Markdown): demo/reports/tables/   figures: demo/reports/figures/"
	@echo "Pretrained backbone and its zero-shot accuracy: demo/runs/backbone/backbone.json"
	@echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath demo)/mlflow.db --workers 1"

# reports/paper.tex compiled around the demo's tables and figures (run `make demo` first) into
# $(PAPER_REPORTS)/paper.pdf; pdflatex runs in a temporary folder, so no aux or log file lands in the tree
# (prompt_ot/report/pdf.py; TeX from Debian: texlive-latex-base texlive-latex-recommended, as .ci/run installs)
PAPER_REPORTS ?= demo/reports
paper:
	@test -f $(PAPER_REPORTS)/tables/all.tex || \
		{ echo "make paper: no demo tables in $(PAPER_REPORTS)/tables: run \`make demo\` first" >&2; exit 1; }
	@$(MAKE) -s --no-print-directory setup
	$(PY) -m prompt_ot.report.pdf $(PAPER_REPORTS) --out $(PAPER_REPORTS)/paper.pdf

smoke: setup
	$(PY) -m prompt_ot smoke --method prompt_ot --epochs 3 --out smoke_out

# pytest-xdist: 3 workers on 2 cores (the SLURM tests mostly wait for the cluster's status polling while two workers
# compute); tests that share a module's fixture run in one worker, in the order tests/conftest.py puts them, the
# longest chains first (docs/testing.md)
XDIST ?= -n 3 --dist loadgroup --no-loadscope-reorder
test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" $(XDIST) --durations=20

test-fast: setup
	$(PY) -m pytest -q -m "not system and not slow and not gpu" $(XDIST) --durations=10

test-all: setup
	$(PY) -m pytest -q $(XDIST) --durations=20

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# every benchmark in bench/ (bench/bench_*.py) in its documented default configuration, one after the
# other; each writes its report in reports/perf/ (bench/README.md lists them and how long they take)
bench: setup
	@set -e; for script in bench/bench_*.py; do echo "== $(PY) $$script"; $(PY) $$script; done

clean:
	rm -rf smoke_out .pytest_cache
