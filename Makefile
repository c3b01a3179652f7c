# The development environment lives in .venv and is built from this project's own files:
# pyproject.toml (what homing needs) pinned by requirements/dev.lock (the versions CI uses).
# Every other Python homing supports (pyproject.toml's classifiers) gets a venv of its own,
# .venv-3.X, built the same way by scripts/pythons.py.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-django test test-pythons lint format docs bench dist lock clean

$(STAMP): pyproject.toml requirements/dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/dev.lock -e '.[dev]'
	touch $(STAMP)

## run: the reference service (the article's API) on http://127.0.0.1:$${PORT:-8080}, with the
## local push broker delivering its events (durable in users_api.broker.sqlite3, OIDC on)
run: $(STAMP)
	PYTHONPATH=examples $(BIN)/homing dev --app users_api.app:create_app --data users_api.broker.sqlite3

## run-django: the Django reference service (examples/django_api: the same HTTP API, on
## homing.django) on http://127.0.0.1:$${PORT:-8080}, migrated, with the local push broker
## delivering its events and tasks (durable in django_api.broker.sqlite3, OIDC on)
run-django: $(STAMP)
	PYTHONPATH=examples $(BIN)/python -m django_api migrate --verbosity 0
	PYTHONPATH=examples DJANGO_SETTINGS_MODULE=django_api.settings \
	  $(BIN)/homing dev --app django_api.asgi:application --data django_api.broker.sqlite3

## test: lint, types, the docs site and the whole test suite, and beside it the suite without
## its end-to-end tests on each other supported Python (installs Debian's chromium for the
## broker's web-page test when missing and apt-get is there)
test: $(STAMP) lint docs
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null \
	  || apt-get install -y -qq chromium >/dev/null \
	  || { dpkg --configure -a >/dev/null && apt-get install -y -qq chromium >/dev/null; } \
	  || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: could not install chromium; the web-page test needs it" >&2
	$(BIN)/python -m tests.schemas.asyncapi  # the pinned AsyncAPI 3.0 schema, into .cache/
	$(BIN)/python scripts/pythons.py test --beside $(BIN)/python -m pytest

## test-pythons: the suite without its end-to-end tests on each other supported Python, each in
## its own .venv-3.X (a Python not found fails under CI, and is skipped, saying so, elsewhere)
test-pythons: $(STAMP)
	$(BIN)/python scripts/pythons.py test

lint: $(STAMP)
	$(BIN)/ruff format --check src examples tests bench scripts docs/_hooks.py
	$(BIN)/ruff check src examples tests bench scripts docs/_hooks.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layers: [tool.importlinter] in pyproject.toml
	$(BIN)/python -m scripts.import_cycles

## docs: the documentation site in site/ (strict: a broken link or reference fails)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format src examples tests bench scripts docs/_hooks.py
	$(BIN)/ruff check --fix src examples tests bench scripts docs/_hooks.py

## bench: every hot path beside its baseline (needs wrk; installed from Debian when missing)
bench: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y -qq wrk \
	  || { apt-get update -qq && apt-get install -y -qq wrk; }
	PYTHONPATH=examples $(BIN)/python -m bench.run

## dist: the wheel and the sdist in dist/, built by the standard front-end, and checked by twine
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

## lock: re-pin the development environment after changing pyproject.toml; each other supported
## Python is checked to install exactly those pins, or gets requirements/dev-3.X.lock of its own
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements/dev.lock
	rm -rf .lockenv
	$(PYTHON) scripts/pythons.py lock

clean:
	rm -rf $(VENV) $(VENV)-3.* .mypy_cache .pytest_cache .ruff_cache .cache site build dist
