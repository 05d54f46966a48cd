# twotower: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test lint bench clean

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
	$(BIN)/ruff format --check twotower_cli tests bench
	$(BIN)/ruff check twotower_cli tests bench

# BENCH_ARGS=--quick for a few minutes; --sections train,eval,ann,scale picks parts
BENCH_ARGS ?=
bench: install ## speed and scale benchmark -> outputs/bench/bench.{json,md}, scale.png (long)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m bench.run $(BENCH_ARGS)

clean: ## delete outputs/ (always safe)
	rm -rf outputs multirun
