# Two entry points: `make demo` (the main job) and `make test`. Both create the pinned
# virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.avfeat-installed
DEMO ?= demo

.PHONY: setup demo test test-slow test-isa lint docs docs-check bench clean gpu-check

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/avfeat demo --out $(DEMO) --overwrite

# `make test`: everything but the `slow` end-to-end runs (about 5 minutes on 2 CPU cores);
# `make test-slow`: only those (acceptance levels, Ray, the demo, benchmark smoke runs), on
# TEST_WORKERS pytest-xdist processes, a module to each at a time, each process (and every
# process it starts) computing on one thread so that the workers do not fight over cores.
# CI runs both.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# The quality levels (`acceptance` tests) again with torch's, oneDNN's, MKL's and FBGEMM's kernels
# held to AVX2 (an AVX2-only CPU, as met on AMX and AVX512 machines) and to no vector extension
# beyond SSE4 (ATen's portable kernels): a level must not depend on the CPU a run lands on.
ISA_AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2
ISA_SSE := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2
test-isa: $(STAMP)
	$(ISA_AVX2) $(BIN)/python -m pytest -q -m "acceptance and not slow" $(PYTEST_ARGS)
	$(ISA_SSE) $(BIN)/python -m pytest -q -m "acceptance and not slow" $(PYTEST_ARGS)

# The import layers of docs/architecture.md (.importlinter). The stages live beside avfeat/ on
# disk and pyproject.toml's package-dir maps them into it, so the check reads a copy laid out
# as installed.
LAYERS := build/layers
lint: $(STAMP)
	rm -rf $(LAYERS) && mkdir -p $(LAYERS) && cp -r avfeat $(LAYERS)/
	for stage in extract data align index; do cp -r $$stage $(LAYERS)/avfeat/; done
	cd $(LAYERS) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/.importlinter

# The docs site: docs/reference/cli.md regenerated from the app, then built strictly into build/site.
docs: $(STAMP)
	$(BIN)/python docs/gen_cli.py
	$(BIN)/mkdocs build --strict --site-dir build/site

# CI builds the pages as committed: a reference page behind the app's help is a failure of
# tests/docs/test_site.py, not something CI quietly regenerates.
docs-check: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir build/site

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
