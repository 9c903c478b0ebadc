# Two entry points: `make demo` (the main job) and `make test`. Both create the pinned
# virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.avfeat-installed
DEMO ?= demo

.PHONY: setup demo test test-slow bench clean gpu-check

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/avfeat demo --out $(DEMO) --overwrite

# `make test`: everything but the `slow` end-to-end runs (about 20 minutes on 2 CPU cores);
# `make test-slow`: only those (acceptance levels, Ray, the demo). CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/search.py

# On a machine with an NVIDIA GPU: every GPU path, time-boxed (under 8 min), one JSON of
# figures. Runs with the machine's own CUDA PyTorch (no venv, no install); see README "GPU check".
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache
