# Two commands do everything on a fresh machine:
#   make search   - set up .venv, run a real search on Fashion-MNIST (children trained for real)
#                   and export the best child as a bundle
#   make test     - set up .venv, lint, type-check and run the test suite
#   make compose-test - the docker-compose cluster for real: a private Docker engine
#                   (../shared/tools/docker-local.sh), local images, jobs, Prometheus, restarts
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/quickstart
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install search search-nb201 test compose-test lint bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(FMNIST):
	@echo "Fashion-MNIST is missing: installing Debian's dataset-fashion-mnist"
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

search: $(STAMP) $(FMNIST)
	$(BIN)/nas search --space enas-micro --strategy reinforce --evaluator train \
		--dataset fashion-mnist --budget 8 --epochs 1 --train-subset 8000 --val-subset 2000 \
		--seed 0 --out $(OUT)
	$(BIN)/nas export $(OUT) --top 1 --to $(OUT)/bundle

search-nb201: $(STAMP)
	$(BIN)/nas search --space nb201 --strategy reinforce --evaluator nb201 --dataset cifar10 \
		--budget 100 --seed 0 --out runs/nb201

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint $(FMNIST)
	$(BIN)/python -m pytest -q

compose-test: $(STAMP)
	deploy/compose-test.sh $(BIN)/python

bench: $(STAMP)
	$(BIN)/python -m bench all

protos: $(STAMP)
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
