# One-command entry points. Each target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= default
CORES ?= 2
ARGS ?=

.PHONY: setup run test test-quick lint bench clean-results

$(BIN)/lapa: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch and torchvision first, as a matching pair (timm needs torchvision).
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev]"
	touch $(BIN)/lapa

setup: $(BIN)/lapa

## run the Snakemake DAG of the chosen experiment on this machine (local profile); a lock left by a
## killed run is removed first when no snakemake works in this directory (workflow/lib/lapa_workflow/locks.py)
run: setup
	PYTHONPATH=workflow/lib $(BIN)/python -m lapa_workflow.locks --directory . --snakemake $(BIN)/snakemake
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --profile profiles/local --cores $(CORES) --config experiment=$(EXPERIMENT) $(ARGS)

## the whole test suite
test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

## the quick loop: everything but the slow tests
test-quick: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

## every CPU benchmark in bounded time; writes docs/benchmarks.md (machine, commit, date, each figure beside its baseline)
bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/run_all.py $(ARGS)

lint: setup
	$(BIN)/ruff check lapa tests benchmarks
	$(BIN)/ruff format --check lapa tests benchmarks
