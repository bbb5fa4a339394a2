# Everything runs inside .venv, created on first use from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SEEDS ?= 100000

.PHONY: install test lint run proto sim bench-raft soak clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

## make test: lint, type-check and the default test suite (real etcd included).
test: lint
	$(BIN)/python -m pytest -q

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## make run: start a local 3-member cluster and print how to reach it (Ctrl-C stops it).
run: $(INSTALLED)
	$(BIN)/kvstore reference-etcd --members 3

## make proto: regenerate kvstore/_pb from proto/ (a test fails when it is stale).
proto: $(INSTALLED)
	$(BIN)/python -m kvstore._pb.generate

## make soak: the long-running tests left out of the default run.
soak: $(INSTALLED)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
