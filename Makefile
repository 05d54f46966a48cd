# twotower: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test lint clean loadtest

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# the CPU build of torch first (it lies on disk); an unpinned torch would pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with torch (CPU) and twotower in editable mode
	@test -x $(BIN)/twotower

run: install ## every stage on MovieLens-100K, ending with the evaluation table
	$(BIN)/twotower run

test: install ## the whole test suite (the real MovieLens run included)
	$(BIN)/pytest -q

lint: install ## ruff format check and lint
	$(BIN)/ruff format --check twotower_cli tests
	$(BIN)/ruff check twotower_cli tests

loadtest: install ## 32 clients on 127.0.0.1 against `twotower serve` -> outputs/loadtest.json
	test -f outputs/ml100k/sample/inbatch/dssm/index/manifest.json || $(BIN)/twotower run
	$(BIN)/python -m twotower_cli.loadtest --requests 20000 --concurrency 32 --max-seconds 120

clean: ## delete outputs/ (always safe)
	rm -rf outputs multirun
