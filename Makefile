# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.contrastkit-installed

.PHONY: setup demo test test-fast clean

# torch is pinned to the CPU wheel that lies on disk (2.13.0) unless the venv already has a torch:
# an unpinned torch pulls a CUDA build of several GB.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,timeseries,graphs,tabular,text]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/contrastkit fit

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
