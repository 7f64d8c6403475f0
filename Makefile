# runplane: every target sets itself up from a clean clone (Python 3.11+, make, npm).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SETUP := $(VENV)/.setup-done
# The exact versions the service is built and tested with; `make lock` writes it.
LOCK := requirements.lock
# The lock tool, pinned here so that `make lock` needs nothing installed by hand.
UV := $(VENV)/bin/uv
# The stub generators' own venv (see proto/codegen.in): grpcio-tools there is older than
# the service's grpcio on purpose, so the committed stubs accept a wide range of versions.
CODEGEN := proto/.venv/.setup-done
CODEGEN_LOCK := proto/codegen.lock
UV_VERSION := 0.13.9
BUF := proto/node_modules/.bin/buf
NODE_TEST_DEPS := tests/polyglot/node_modules/.package-lock.json
# buf reads google/api/field_behavior.proto (imported by the proto) and the
# google/rpc error details (generated for TypeScript) from here; they are copied
# from the googleapis-common-protos package installed in the venv (buf has no network).
THIRD_PARTY_PROTOS := $(addprefix proto/third_party/google/,\
	api/field_behavior.proto rpc/status.proto rpc/error_details.proto)
# TypeScript stubs (protoc-gen-es, pinned in tests/polyglot) for the Node.js tests.
TS_STUBS := tests/polyglot/src/gen
TS_GENERATE := $(BUF) generate proto --template proto/buf.gen.yaml
export RUNPLANE_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: setup lock run test test-py proto check-proto lint bench bench-telemetry bench-langgraph clean

setup: $(SETUP)

# The lock first (hashes checked), then the project itself from what is installed:
# with no index to fall back on, a dependency missing from the lock fails here.
$(SETUP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-index \
		--no-build-isolation -e '.[server,dev]' \
		|| { echo "$(LOCK) does not match pyproject.toml: run 'make lock'" >&2; exit 1; }
	touch $@

$(BUF): proto/package.json proto/package-lock.json
	cd proto && npm ci --silent --no-audit --no-fund
	touch $@

$(NODE_TEST_DEPS): tests/polyglot/package.json tests/polyglot/package-lock.json
	cd tests/polyglot && npm ci --silent --no-audit --no-fund
	touch $@

proto/third_party/google/%.proto: $(SETUP)
	mkdir -p $(@D)
	$(BIN)/python -c 'import google.api, pathlib, shutil, sys; \
	shutil.copy(pathlib.Path(google.api.__path__[0]).parent / sys.argv[1], sys.argv[2])' $*.proto $@

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

## Rewrite requirements.lock from pyproject.toml, keeping the versions it has where they
## still fit; `make lock ARGS=--upgrade` (or `ARGS='--upgrade-package NAME'`) moves on.
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra server --extra dev --universal --python-version 3.11 \
		--generate-hashes --quiet --custom-compile-command 'make lock' --output-file $(LOCK) $(ARGS)
	@{ echo "# The exact versions of every dependency of the service build ('make setup')."; \
	  echo "# After changing dependencies in pyproject.toml, run 'make lock' and commit both."; \
	  echo "# It keeps every version that still fits; 'make lock ARGS=--upgrade' moves all to"; \
	  echo "# the newest allowed, 'make lock ARGS=\"--upgrade-package NAME\"' moves one."; \
	  cat $(LOCK); } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	$(UV) pip compile proto/codegen.in --universal --python-version 3.11 --generate-hashes \
		--quiet --custom-compile-command 'make lock' --output-file $(CODEGEN_LOCK) $(ARGS)

$(CODEGEN): $(CODEGEN_LOCK)
	$(PYTHON) -m venv proto/.venv
	proto/.venv/bin/python -m pip install --quiet --disable-pip-version-check \
		--require-hashes -r $(CODEGEN_LOCK)
	touch $@

## Serve on 127.0.0.1:50051 with the embedded SQLite default (./runplane.db).
run: $(SETUP)
	$(BIN)/runplane serve

## Regenerate the committed stubs from proto/: Python in client/runplane/v1,
## TypeScript in tests/polyglot/src/gen.
proto: $(CODEGEN) $(BUF) $(NODE_TEST_DEPS) $(THIRD_PARTY_PROTOS)
	proto/.venv/bin/python proto/generate.py
	$(TS_GENERATE)

## Fail if the committed stubs differ from what the .proto files generate.
check-proto: $(CODEGEN) $(BUF) $(NODE_TEST_DEPS) $(THIRD_PARTY_PROTOS)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	proto/.venv/bin/python proto/generate.py --out $$tmp 2>/dev/null && \
	diff -r -x __pycache__ client/runplane/v1 $$tmp/runplane/v1 && \
	$(TS_GENERATE) --output $$tmp && \
	diff -r $(TS_STUBS) $$tmp/$(TS_STUBS) && \
	echo "check-proto: stubs match proto/"

## ruff, mypy (strict), buf lint (STANDARD + COMMENTS), buf format, and buf breaking
## against the last released proto (proto/releases/).
lint: $(SETUP) $(BUF) $(THIRD_PARTY_PROTOS)
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

## What metrics and tracing cost: runplane with each on and off, in turn, over 3 rounds
## (JSON: telemetry_cost). BENCH_TELEMETRY_TARGETS picks others, e.g. the -postgres ones.
BENCH_TELEMETRY_TARGETS ?= runplane-sqlite,runplane-sqlite-metrics,runplane-sqlite-tracing
bench-telemetry: $(SETUP)
	@$(BIN)/python -m tests.bench.run --scenarios unary --rounds 3 \
		--targets $(BENCH_TELEMETRY_TARGETS)

## runplane (SQLite, and PostgreSQL when its URL is known) against LangGraph Server's
## in-memory dev server, from a venv of its own (RUNPLANE_BENCH_LANGGRAPH=/path/to/venv;
## never a project dependency). Without it the JSON says how to install it.
bench-langgraph: $(SETUP)
	@$(BIN)/python -m tests.bench.run --scenarios langgraph $(BENCH_ARGS)

clean:
	rm -rf $(VENV) proto/.venv proto/node_modules tests/polyglot/node_modules tests/polyglot/build runplane.db runplane.db-*
