# The two set-up commands (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test lint typecheck unit slow mutation

env:
	scripts/bootstrap.sh $(VENV)

demo: env
	$(VENV)/bin/cloud-hub demo

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports  # layer contracts in pyproject.toml (docs/architecture.md)

typecheck: env
	$(VENV)/bin/mypy

unit: env
	$(PY) -m pytest -q -p no:cacheprovider

test: lint typecheck unit

slow: env
	$(PY) -m pytest -q -m slow

# Mutation testing of the trust core (not in the default suite): score per module.
mutation: env
	$(PY) benchmarks/mutation.py --survivors
