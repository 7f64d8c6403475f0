# runplane: every target sets itself up from a clean clone (Python 3.11+, make, npm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SETUP := $(VENV)/.setup-done
BUF := proto/node_modules/.bin/buf
NODE_TEST_DEPS := tests/polyglot/node_modules/.package-lock.json
export RUNPLANE_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: setup run test test-py proto check-proto lint bench clean

setup: $(SETUP)

$(SETUP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(BUF): proto/package.json proto/package-lock.json
	cd proto && npm ci --silent --no-audit --no-fund
	touch $@

$(NODE_TEST_DEPS): tests/polyglot/package.json tests/polyglot/package-lock.json
	cd tests/polyglot && npm ci --silent --no-audit --no-fund
	touch $@

## Serve on 127.0.0.1:50051 with the embedded SQLite default (./runplane.db).
run: $(SETUP)
	$(BIN)/runplane serve

## Regenerate the committed stubs in client/runplane/v1 from proto/.
proto: $(SETUP)
	$(BIN)/python proto/generate.py

## Fail if the committed stubs differ from what the .proto files generate.
check-proto: $(SETUP)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(BIN)/python proto/generate.py --out $$tmp 2>/dev/null && \
	diff -r -x __pycache__ client/runplane/v1 $$tmp/runplane/v1 && \
	echo "check-proto: stubs match proto/"

lint: $(SETUP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd proto && node_modules/.bin/buf lint && node_modules/.bin/buf format --diff --exit-code

## Every test: unit, integration on SQLite and PostgreSQL, polyglot (Node.js).
test: check-proto lint $(NODE_TEST_DEPS)
	$(BIN)/pytest

test-py: $(SETUP)
	$(BIN)/pytest

bench: $(SETUP)
	@$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) proto/node_modules tests/polyglot/node_modules runplane.db runplane.db-*
