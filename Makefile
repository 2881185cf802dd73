# vikhr: the README's two commands are `make demo` and `make test`; each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vikhr-installed
# Reinstall (rebuilding the Rust extension) when the build inputs change.
BUILD_INPUTS := pyproject.toml Cargo.toml $(shell find rust -name '*.rs' -o -name 'Cargo.toml')

.PHONY: setup demo test test-rust test-python lint format clean

setup: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## demo: the main job on the bundled default data (CPU, no downloads)
demo: setup
	$(BIN)/vikhr demo --overwrite

## test: Rust (fmt, clippy, cargo test), Python lint, then pytest
test: setup lint test-rust test-python

lint: setup
	cargo fmt --all --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Release tests reuse the dependencies the extension's build (setup) compiled, and run faster.
test-rust:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --release

# Two pytest workers: most tests use one core each (OMP_NUM_THREADS=1); torchrun tests start their own ranks.
test-python: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=15

format:
	cargo fmt --all
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) target
