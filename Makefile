# twotower: `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test test-fast lint bench bench-gpu bench-extra loadtest clean compare-models compare-history compare-samplers news-sim recbole-env bench-recbole ml1m

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

test: install ## the whole test suite (the real MovieLens run included; CI runs this)
	# everything on every core, one file per worker at a time (module fixtures built once), then
	# the serial lane alone: its dist, kill and live-server tests time themselves (tests/e2e/conftest.py)
	$(BIN)/pytest -q -m "not serial" -n auto --dist loadfile
	$(BIN)/pytest -q -m serial

test-fast: install ## the inner loop: tests/unit/, every test not marked slow (tests/e2e/ is)
	# on every core (pytest-xdist): its config tests compose Hydra configs, ~0.2 s each
	$(BIN)/pytest -q -m "not slow" -n auto

lint: install ## ruff format check and lint
	$(BIN)/ruff format --check twotower_cli tests bench
	$(BIN)/ruff check twotower_cli tests bench

# BENCH_ARGS=--quick for a few minutes; --sections train,eval,ann,scale,dist,peers picks parts
BENCH_ARGS ?=
bench-extra: install ## the optional `bench` extra (torch-rechub, for the peers section)
	$(BIN)/python -c "import torch_rechub" 2>/dev/null || $(BIN)/pip install -q -e '.[dev,bench]'

bench: bench-extra ## speed and scale benchmark -> outputs/bench/bench.{json,md}, scale.png (long)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-gpu: install ## train, eval and ANN search on CUDA -> outputs/bench-gpu/ (fails without a GPU)
	$(BIN)/python -m bench.run --device cuda --sections train,eval,ann --out outputs/bench-gpu \
		$(BENCH_ARGS)

# RecBole 1.2.1 itself, in its own venv (its pins clash with twotower's): docs/recbole-protocol.md
RB_VENV := .venv-recbole
RB_BIN := $(RB_VENV)/bin
RB_STAMP := $(RB_VENV)/.installed

$(RB_STAMP): bench/recbole/requirements.txt
	test -x $(RB_BIN)/python || $(PY) -m venv $(RB_VENV)
	# the CPU build of torch first (it lies on disk); any other torch pulls a CUDA build
	$(RB_BIN)/pip install -q torch==2.13.0
	$(RB_BIN)/pip install -q -r bench/recbole/requirements.txt
	touch $(RB_STAMP)

recbole-env: $(RB_STAMP) ## create .venv-recbole: torch 2.13.0 (CPU) + recbole 1.2.1 and its pins

# RECBOLE_ARGS=--threads 1 on a busy machine; RECBOLE_MODELS picks models; LightGCN is left out
# by default: about 19 s per epoch (1 thread), hours for its up to 500 epochs (docs/bench.md)
RECBOLE_MODELS ?= EASE BPR ItemKNN Pop
RECBOLE_ARGS ?=
RECBOLE_OUT ?= outputs/bench/recbole
bench-recbole: recbole-env ## RecBole itself on ML-1M, published setup -> outputs/bench/recbole/ (long)
	$(RB_BIN)/python bench/recbole/fetch_ml1m.py
	$(RB_BIN)/python bench/recbole/run_recbole.py --out $(RECBOLE_OUT) $(RECBOLE_ARGS) $(RECBOLE_MODELS)
	$(RB_BIN)/python bench/recbole/run_recbole.py --out $(RECBOLE_OUT) --table

compare-models: install ## the four tower variants on MovieLens-100K, one sampler -> outputs/compare/models.md
	$(BIN)/python -m twotower_cli.tools.compare --name models \
		--runs "model=dssm" "model=senet" "model=parallel" "model=multitask" --seeds 0 \
		-- sampler=inbatch

compare-history: install ## DSSM with/without the user-history feature -> outputs/compare/history.md
	$(BIN)/python -m twotower_cli.tools.compare --name history \
		--runs "model=dssm" "model=dssm model.history=true" \
		"model=dssm model.history=true model.history_pooling=attention" --seeds 0 \
		-- sampler=inbatch

loadtest: install ## 32 clients on 127.0.0.1 against `twotower serve` -> outputs/loadtest.json
	test -f outputs/ml100k/sample/inbatch/dssm/index/manifest.json || $(BIN)/twotower run
	$(BIN)/python -m twotower_cli.tools.loadtest --requests 20000 --concurrency 32 --max-seconds 120

NEWS_ARGS ?= threads=1
news-sim: install ## a simulated 3,000-user news app: the default `dataset=news` run and the oracle
	$(BIN)/python -m twotower_cli.tools.news_sim outputs/news_sim/raw
	$(BIN)/twotower run dataset=news dataset.load.raw_dir=outputs/news_sim/raw \
		paths.out=outputs/news_sim $(NEWS_ARGS)
	$(BIN)/python -m twotower_cli.tools.news_sim outputs/news_sim/raw \
		--oracle outputs/news_sim/news/preprocess

ML1M_ARGS ?= threads=1
ml1m: install ## MovieLens-1M under RecBole's protocol: default model + baselines, prints the table
	$(BIN)/twotower run dataset=ml1m protocol=recbole $(ML1M_ARGS)

clean: ## delete outputs/ (always safe)
	rm -rf outputs multirun

# every sampler (and in-batch logQ exact/streaming/off) on MovieLens-100K; mined hard negatives
# read the embeddings of the in-batch run made just before them
SAMPLER_RUNS := "sampler=random" "sampler=random loss=sampled_softmax" "sampler=popularity" \
	"sampler=popularity sampler.mode=rank" "sampler=hard" "sampler=inbatch sampler.logq=off" \
	"sampler=inbatch" "sampler=inbatch sampler.logq=streaming" "sampler=mixed" \
	"sampler=hard sampler.kind=mined sampler.source_run=inbatch/cmp-samplers-sampler-inbatch-s0"
# extra overrides for every compared run, e.g. COMPARE_ARGS=threads=1 on a shared machine
COMPARE_ARGS ?=
SEEDS ?= 0 1 2

compare-samplers: install ## samplers x metrics (mean over SEEDS) -> outputs/compare/samplers.md
	$(BIN)/python -m twotower_cli.tools.compare --name samplers --seeds $(SEEDS) \
		--runs $(SAMPLER_RUNS) -- $(COMPARE_ARGS)
