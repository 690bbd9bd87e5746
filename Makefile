# One-command setup: `make test` and `make demo` create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.14.1
# The torchvision release built for that torch: transformers constructs `InternVLProcessor` (what
# `AutoProcessor` gives for an export) only where torchvision imports.
TORCHVISION_VERSION ?= 0.29.1

.PHONY: install test test-fast lint format demo demo-quick bench clean

install: $(STAMP)

# torch and torchvision first, pinned as a pair: an unpinned torch pulls whatever build is newest,
# and a torchvision built for another torch fails at import.
# The deepspeed extra after torch, built against it with no ops (CPU accelerator recorded at install time).
$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(BIN)/pip install -e ".[dev]"
	DS_BUILD_OPS=0 $(BIN)/pip install --no-build-isolation -e ".[dev,deepspeed]"
	rm -rf build
	touch $(STAMP)

# transformers 4.37.2 + tokenizers 0.15.2 beside the venv (what InternVL's own code pins), for the
# tests that read our exports as it does; a failed install only makes those tests install again or skip.
LEGACY := $(VENV)/legacy/transformers-4.37.2/.installed
$(LEGACY): | $(STAMP)
	-$(BIN)/python -m tests.helpers.legacy

test: $(STAMP) $(LEGACY)
	$(BIN)/python -m pytest -q tests

# Skips tests marked slow (tests/integration/ and compilation): under 2 minutes on 2 cores.
test-fast: $(STAMP) $(LEGACY)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

demo: $(STAMP)
	$(BIN)/python -m internvl_lightning demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/python -m internvl_lightning demo --out runs/demo-quick --quick

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs build .pytest_cache
