# Set-up and entry points. Every target creates the virtual environment first if it is missing.
#   make demo   the main job: the offline demo, the whole pipeline on the CPU (demo/params.yaml)
#   make test   the default test suite (CPU, offline)
#   make paper  reports/paper.tex around the demo's tables, compiled into demo/reports/paper.pdf (pdflatex)
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

.PHONY: setup demo demo-data paper smoke test test-all bench clean

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

# Fashion-MNIST from Debian when apt is usable; otherwise the recipe falls back to torchvision's download
demo-data:
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true; fi

# every job of the demo starts as a fork of one process that has imported torch and open_clip (prompt_ot/forkserver.py;
# the same results as jobs in their own processes, seconds sooner each)
demo: setup demo-data
	cd demo && $(abspath $(PY)) -m prompt_ot forkserver -- snakemake -s ../Snakefile --cores $(CORES) \
		--resources gpu=$(CORES) --rerun-incomplete --quiet rules
	@echo
	@cat demo/reports/tables/base2novel_average.md
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

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: setup
	$(PY) -m pytest -q

# every benchmark in bench/ (bench/bench_*.py) in its documented default configuration, one after the
# other; each writes its report in reports/perf/ (bench/README.md lists them and how long they take)
bench: setup
	@set -e; for script in bench/bench_*.py; do echo "== $(PY) $$script"; $(PY) $$script; done

clean:
	rm -rf smoke_out .pytest_cache
