# The one task runner: the README, CI and people call these targets.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
# keeps every Ray process on the loopback address it is given (Ray 2.60 otherwise swaps in the LAN address)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install flower demo test test-unit servers up down bench lint format clean

install: $(STAMP)   ## create .venv and install omnicart with its dev tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the 2.13.0 CPU wheel here (a loose requirement would pull a multi-GB CUDA build)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Flower (federated training) pins fastapi, starlette, uvicorn, rich, typer and protobuf below the platform's, so it
# gets an environment of its own; omnicart.federated starts its apps from there as a separate process.
FLOWER_VENV ?= .venv-flwr
FLOWER_STAMP := $(FLOWER_VENV)/.installed-stamp
FLOWER_REQUIREMENTS := "flwr==1.42.0" "numpy>=1.26,<3"

flower: $(FLOWER_STAMP)  ## create .venv-flwr with Flower, for `omnicart bench federated` and the train_federated DAG

$(FLOWER_STAMP): Makefile
	test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOWER_VENV)/bin/python -m pip install --quiet $(FLOWER_REQUIREMENTS)
	$(FLOWER_VENV)/bin/python -m pip check
	touch $(FLOWER_STAMP)

demo: install       ## set up, then run the main job end to end on the embedded default
	OMNICART_CONFIG=infra/config/demo.yaml $(BIN)/omnicart demo

test: install flower servers  ## set up, then run every test (unit and integration with real services)
	# Airflow and Ray read their configuration once per process, and each integration module runs its own
	# platform home: the unit tier and every integration module get a fresh interpreter.
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit
	status=0; for module in tests/integration/test_*.py; do \
	  $(BIN)/python -m pytest -p no:cacheprovider "$$module" || status=1; \
	done; exit $$status

servers:            ## PostgreSQL and Redis for the production-profile test (Debian packages; installed when missing)
	@.ci/install-servers || echo "make servers: without PostgreSQL and Redis, test_production_profile.py skips" >&2

test-unit: install
	$(BIN)/python -m pytest -p no:cacheprovider -m "not integration"

up: install
	OMNICART_CONFIG=infra/config/demo.yaml $(BIN)/omnicart up

down: install
	OMNICART_CONFIG=infra/config/demo.yaml $(BIN)/omnicart down

bench: install flower  ## e.g. make bench ARGS="recommend --dataset online_retail_ii --json bench.json"
	$(BIN)/omnicart bench $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .omnicart
