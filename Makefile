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
	$(BIN)/python -m pip install -q -e ".[test,timeseries,graphs,tabular,text,audio,export,trackers,report,images]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/contrastkit fit

# One pytest worker per core, at most 4 (pytest-xdist; each worker holds torch, Lightning and a model or
# two in memory); each file's tests stay on one worker, so a module's fixtures are built once.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, os.cpu_count() or 1))")

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache

# The anchor environment of benchmarks/README.md: LightlySSL 1.6, pytorch-metric-learning and this working
# tree's contrastkit under one torch build, in the venv that CONTRASTKIT_ANCHOR_ENV names (never .venv).
# torch and torchvision are pinned in every install, so that no later package replaces them.
ANCHOR_TORCH := 'torch==2.14.1' 'torchvision==0.29.1'
ANCHOR_BIN    = $(CONTRASTKIT_ANCHOR_ENV)/bin

.PHONY: anchors
anchors:
	@test -n "$(CONTRASTKIT_ANCHOR_ENV)" || { echo "make anchors: set CONTRASTKIT_ANCHOR_ENV to the folder of the anchor venv to build, e.g. CONTRASTKIT_ANCHOR_ENV=\$$HOME/anchors-venv make anchors (benchmarks/README.md)" >&2; exit 1; }
	test -x "$(ANCHOR_BIN)/python" || $(PYTHON) -m venv "$(CONTRASTKIT_ANCHOR_ENV)"
	"$(ANCHOR_BIN)/pip" install $(ANCHOR_TORCH)
	"$(ANCHOR_BIN)/pip" install 'lightly==1.6.*' pytorch-metric-learning $(ANCHOR_TORCH)
	"$(ANCHOR_BIN)/pip" install --no-deps -e "$(CURDIR)"
	"$(ANCHOR_BIN)/pip" install lightning kornia safetensors scikit-learn faiss-cpu matplotlib pyyaml pillow pytest $(ANCHOR_TORCH)
	"$(ANCHOR_BIN)/python" -c "import lightly.loss, torchvision, pytorch_metric_learning, contrastkit.objectives"

# The text anchor environment (benchmarks/text_vs_sentence_transformers.py): sentence-transformers'
# trainer (it needs datasets and accelerate) and this working tree's contrastkit under the SAME torch
# build as .venv (2.13.0 CPU, pinned first and in every install), in the venv that
# CONTRASTKIT_TEXT_ANCHOR_ENV names (never .venv).
TEXT_ANCHOR_TORCH := 'torch==2.13.0'
TEXT_ANCHOR_BIN    = $(CONTRASTKIT_TEXT_ANCHOR_ENV)/bin

.PHONY: text-anchors
text-anchors:
	@test -n "$(CONTRASTKIT_TEXT_ANCHOR_ENV)" || { echo "make text-anchors: set CONTRASTKIT_TEXT_ANCHOR_ENV to the folder of the venv to build, e.g. CONTRASTKIT_TEXT_ANCHOR_ENV=\$$HOME/text-anchors-venv make text-anchors (benchmarks/README.md)" >&2; exit 1; }
	test -x "$(TEXT_ANCHOR_BIN)/python" || $(PYTHON) -m venv "$(CONTRASTKIT_TEXT_ANCHOR_ENV)"
	"$(TEXT_ANCHOR_BIN)/pip" install $(TEXT_ANCHOR_TORCH)
	"$(TEXT_ANCHOR_BIN)/pip" install -e "$(CURDIR)[text]" datasets accelerate $(TEXT_ANCHOR_TORCH)
	"$(TEXT_ANCHOR_BIN)/python" -c "import sentence_transformers, datasets, accelerate, torch, contrastkit.modalities.text; assert torch.__version__.startswith('2.13.0'), torch.__version__"
