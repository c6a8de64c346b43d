# modelyard: `make demo` sets up .venv and runs the end-to-end demo; `make test` sets up and runs the tests.
#
# CPU machines get the CPU build of torch 2.13.0 (an unpinned torch would pull a multi-GB CUDA
# build). On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" EXTRAS=dev,cuda

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest tests

test-unit: setup
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) mlflow.db mlartifacts data/store runs
