# runplane: every target sets itself up from a clean clone (Python 3.11+, make, npm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SETUP := $(VENV)/.setup-done
BUF := proto/node_modules/.bin/buf
NODE_TEST_DEPS := tests/polyglot/node_modules/.package-lock.json
# buf reads google/api/field_behavior.proto from here; it is copied from the
# googleapis-common-protos package installed in the venv (buf has no network).
FIELD_BEHAVIOR := proto/third_party/google/api/field_behavior.proto
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

$(FIELD_BEHAVIOR): $(SETUP)
	mkdir -p $(@D)
	$(BIN)/python -c 'import google.api, pathlib, shutil, sys; \
	shutil.copy(pathlib.Path(google.api.__path__[0]) / "field_behavior.proto", sys.argv[1])' $@

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

## ruff, mypy (strict), buf lint (STANDARD + COMMENTS), buf format, and buf breaking
## against the last released proto (proto/releases/).
lint: $(SETUP) $(BUF) $(FIELD_BEHAVIOR)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd proto && node_modules/.bin/buf lint && node_modules/.bin/buf format --diff --exit-code \
		&& node_modules/.bin/buf breaking --against releases/v0.1.0.binpb

## Every test: unit, integration on SQLite and PostgreSQL, polyglot (Node.js).
test: check-proto lint $(NODE_TEST_DEPS)
	$(BIN)/pytest

test-py: $(SETUP)
	$(BIN)/pytest

## The benchmark (JSON on stdout); e.g. make bench BENCH_ARGS="--tls --auth --scenarios unary"
## adds TLS + token-auth twins of each target and their cost against plaintext.
bench: $(SETUP)
	@$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) proto/node_modules tests/polyglot/node_modules runplane.db runplane.db-*
