# ctvol — two commands: `make demo` (main job on bundled real data) and `make test`.
# Both create .venv if needed. torch is pinned to the CPU wheel for this machine
# kind; override TORCH for a CUDA machine, e.g. `make demo TORCH="torch"`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DATA   ?= data/sample/dcm_qa_ct_philips
OUT    ?= demo/cohort.zarr
FINE   ?= demo/cohort_x3_linear.zarr
FINE_UNET ?= demo/cohort_x3_unet.zarr
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
	$(BIN)/ctvol reslice $(OUT) -o $(FINE_UNET) --factor 3 --scheduler threads
	$(BIN)/ctvol info $(FINE_UNET)
	$(BIN)/ctvol evaluate $(OUT) --factor 3 -o $(REPORT) --scheduler threads -q

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/asv machine --yes
	$(BIN)/asv run --python=same --set-commit-hash=$$(git rev-parse HEAD)
	$(BIN)/asv publish

lint: install
	$(BIN)/python -m pip install -q ruff mypy
	$(BIN)/ruff check ctvol tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf demo .asv
