# Bakehouse: the targets a newcomer reaches for first.
PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test reliability lint contracts format typecheck bench bench-pipeline migrations-check venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON_BOOT) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Bakehouse needs Python >= 3.11")'
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

## run: the portal on embedded defaults (SQLite, filesystem broker, local artifacts): web + worker
run: venv
	$(PY) manage.py migrate --no-input
	$(PY) manage.py sync_catalog
	$(PY) manage.py runportal

## test: the whole suite (pipeline, catalog, builds, browser)
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## reliability: worker kills, broker/database/S3 outages, races, hostile inputs, access matrix, secret scan
reliability: venv
	$(PY) -m pytest -m reliability $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## contracts: the layer rules (pure pipeline, adapters and services below the web layer), pyproject.toml
contracts: venv
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## typecheck: mypy over the whole project (the pipeline strictly), configured in pyproject.toml
typecheck: venv
	$(VENV)/bin/mypy

migrations-check: venv
	$(PY) manage.py makemigrations --check --dry-run

## bench: the whole product (API, Celery, PostgreSQL, S3) against the bare tools, scale, load,
## memory and fairness: one table with PASS/FAIL per goal, also as JSON in bench/results/.
## Needs DATABASE_URL (PostgreSQL) and REDIS_URL; BENCH_ARGS="--size quick" for a short run.
bench: venv
	$(PY) -m bench $(BENCH_ARGS)

## bench-pipeline: the bake pipeline alone as ratios to the bare tools, two input sizes
bench-pipeline: venv
	$(PY) -m bench.bake

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
