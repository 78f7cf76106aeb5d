SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# This machine's pip config names local indexes that lack most packages; pip warns per package.
PIP_QUIET_FILTER := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# The tests run against real services; these defaults match the CI machine.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/hokusai
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := ENVIRONMENT=test DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL)

.PHONY: help venv run superuser test lint format requirements bench clean

help:
	@echo "make run        set up everything and run the platform (http://127.0.0.1:8001)"
	@echo "make test       set up everything and run lint, migration check and the test suite"
	@echo "make superuser  create an admin login"
	@echo "make bench      run the benchmarks under bench/"
	@echo "make requirements  re-pin requirements/*.txt from requirements/*.in"

$(VENV)/.installed: requirements/base.txt requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt 2>&1 | $(PIP_QUIET_FILTER)
	@touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) manage.py migrate
	@echo
	@echo "  Hokusai      http://$${HOKUSAI_BIND:-127.0.0.1:8001}/api/v1/health"
	@echo "  API docs     http://$${HOKUSAI_BIND:-127.0.0.1:8001}/api/v1/docs"
	@echo "  Admin        http://$${HOKUSAI_BIND:-127.0.0.1:8001}/admin/  (make superuser)"
	@echo "  MLflow       $${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}"
	@echo "  Ctrl-C stops everything."
	@echo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) deploy/scripts/run_processes.py deploy/Procfile.dev

superuser: venv
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py createsuperuser

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv
	$(PY) deploy/scripts/check_services.py $(TEST_DATABASE_URL) $(TEST_REDIS_URL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(PY) manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

requirements: venv
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-find-links --no-emit-index-url \
		--no-header requirements/base.in -o requirements/base.txt 2>&1 | $(PIP_QUIET_FILTER)
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-find-links --no-emit-index-url \
		--no-header requirements/dev.in -o requirements/dev.txt 2>&1 | $(PIP_QUIET_FILTER)

bench: venv
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) bench/health.py
	$(PY) bench/auth.py
	$(PY) bench/registry.py
	$(PY) bench/webhooks.py
	$(PY) bench/inference.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
