# tickerTap: `make run` starts the whole local stack, `make test` runs every test.
# Everything is installed into .venv from the hashed lock; state lives in .tickertap/.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) deploy/local/stack.py
PACKAGES := $(wildcard libs/*) $(wildcard services/*)
STAMP := $(VENV)/.installed
# the security scanners (bandit, checkov, pip-audit) live in their own venv: checkov's pins
# conflict with the project's; requirements/tools-lock.txt is their hashed lock
TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run up down status reconcile test test-only lint format bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt requirements/bootstrap.txt $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tickerTap needs Python 3.11 or newer (try: make run PYTHON=python3.12)")'
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "$(PYTHON) lacks venv/ensurepip (Debian/Ubuntu: apt install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/bootstrap.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --require-hashes -r requirements/lock.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation $(foreach p,$(PACKAGES),-e $(p))
	@touch $@

$(TOOLS_STAMP): requirements/tools-lock.txt | $(STAMP)
	$(PYTHON) -m venv --without-pip $(TOOLS_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(TOOLS_VENV)/bin/python --require-hashes -r requirements/tools-lock.txt
	@touch $@

install: $(STAMP) $(TOOLS_STAMP) ## create .venv (and .venv-tools, the scanners) from the hashed locks, install our packages

run: install ## start everything in the foreground, print the URLs; Ctrl-C stops it all
	@$(STACK) run

up: install ## start everything detached; returns when all is ready
	@$(STACK) up

down: ## stop a detached stack (make up)
	@if [ -x $(PY) ]; then $(STACK) down; fi

status: ## what runs, and where
	@$(STACK) status

reconcile: install ## check the running ledger agrees with itself (JSON report; exit 1 on drift)
	@$(STACK) exec ledger -- python -m tickertap.ledger.reconcile $(RECONCILE_ARGS)

lint: install ## ruff (lint and format check) and strict mypy on the libraries
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/money/src libs/secrets/src libs/db/src libs/messaging/src libs/observability/src libs/runtime/src libs/authn/src services/ledger/src services/auth/src services/market-data-ingest/src services/portfolio-calculation/src deploy/docker/migrate.py

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

TEST_MARKER := .tickertap/test-stack-started-by-make

test: lint ## lint, start a test stack on its own ports, run every test, stop the stack
	@TICKERTAP_PROFILE=test $(STACK) up --started-marker $(TEST_MARKER) || exit 1; \
	trap 'if [ -f $(TEST_MARKER) ]; then rm -f $(TEST_MARKER); TICKERTAP_PROFILE=test $(STACK) down; fi' EXIT INT TERM; \
	TICKERTAP_PROFILE=test $(PY) -m pytest $(PYTEST_ARGS)

test-only: install ## run the tests against an already running test stack
	TICKERTAP_PROFILE=test $(PY) -m pytest $(PYTEST_ARGS)

bench: install ## benchmarks on their own stack (ports 274xx): start-up, memory, ledger, market-data ingest and auth against their floors; portfolio updates under a 1,000/s price feed
	$(PY) tests/bench/startup.py
	$(PY) tests/bench/ledger_bench.py --runs 3 --duration-s 10
	$(PY) tests/bench/marketdata_bench.py --runs 3
	$(PY) tests/bench/auth_bench.py --runs 3 --duration-s 10
	$(PY) tests/bench/portfolio_bench.py --runs 2

lock: ## recompile the hashed lock files (no download addresses are recorded)
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--no-header --no-emit-index-url requirements/requirements.in -o requirements/lock.txt
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--no-header --no-emit-index-url requirements/bootstrap.in -o requirements/bootstrap.txt
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--no-header --no-emit-index-url requirements/tools.in -o requirements/tools-lock.txt

clean: down ## stop everything and delete .venv and all local state
	@if [ -x $(PY) ]; then for p in test bench; do TICKERTAP_PROFILE=$$p $(STACK) down; done; fi
	rm -rf $(VENV) $(TOOLS_VENV) .tickertap .pytest_cache .mypy_cache .ruff_cache .hypothesis
