# ctvol — two commands: `make demo` (main job on bundled real data) and `make test`.
# Both create .venv if needed. torch is pinned to the CPU wheel for this machine
# kind; override TORCH for a CUDA machine, e.g. `make demo TORCH="torch"`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DATA   ?= data/sample/dcm_qa_ct_philips
OUT    ?= demo/cohort.zarr
FINE   ?= demo/cohort_x3_linear.zarr
FINE_AUTO ?= demo/cohort_x4_auto.zarr
REPORT ?= demo/report
PYTEST_ARGS ?= -m "not slow"
BIN    := $(VENV)/bin

.PHONY: install demo test test-all bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ctvol ingest $(DATA) -o $(OUT)
	$(BIN)/ctvol info $(OUT)
	$(BIN)/ctvol reslice $(OUT) -o $(FINE) --factor 3 --method linear --scheduler threads
	$(BIN)/ctvol reslice $(OUT) -o $(FINE_AUTO) --factor 4 --scheduler threads
	$(BIN)/ctvol info $(FINE_AUTO)
	# The bundled sample is the phantom's test block: no bundled model trained on
	# or was selected on these slices (tests/test_evaluate.py checks it).
	$(BIN)/ctvol evaluate $(OUT) --factor 3 4 5 -o $(REPORT) --scheduler threads -q

test: install lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/asv machine --yes
	$(BIN)/asv run --python=same --set-commit-hash=$$(git rev-parse HEAD)
	$(BIN)/asv publish

lint: install
	$(BIN)/python -m pip install -q ruff mypy import-linter
	$(BIN)/ruff check ctvol tests benchmarks pipelines
	$(BIN)/mypy
	$(BIN)/lint-imports  # the package's layers (pyproject.toml, docs/architecture.md)

clean:
	rm -rf demo .asv
