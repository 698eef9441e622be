# Two commands do everything on a fresh machine:
#   make search   - set up .venv and run a real search (REINFORCE on NAS-Bench-201, CIFAR-10)
#   make test     - set up .venv, lint, type-check and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/quickstart

.PHONY: install search test lint bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

search: $(STAMP)
	$(BIN)/nas search --space nb201 --strategy reinforce --evaluator nb201 --dataset cifar10 \
		--budget 100 --seed 0 --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.nb201

protos: $(STAMP)
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
