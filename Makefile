# Two commands matter: `make run` and `make test`. Both set everything up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml clients/python/pyproject.toml | cksum | cut -d' ' -f1)
STUBS := clients/python/versioner/v1/deployment_service_pb2.py

.PHONY: run test lint proto check-proto bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

$(STUBS): $(STAMP) $(wildcard protos/versioner/v1/*.proto) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py

## proto: regenerate the stubs from protos/ (always).
proto: $(STAMP)
	$(PY) scripts/gen_protos.py

## run: a server on 127.0.0.1:50051 (metrics on :9464) over ./versioner.db.
run: $(STAMP) $(STUBS)
	$(PY) -m versioner_grpc $(ARGS)

## test: the whole suite (PostgreSQL too when VERSIONER_TEST_POSTGRES_URL is set).
test: $(STAMP) $(STUBS)
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff (style) and mypy --strict (types; configured in pyproject.toml).
lint: $(STAMP) $(STUBS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## check-proto: fails when the committed stubs differ from what protos/ generates.
check-proto: proto
	git diff --exit-code --stat -- clients/python/versioner
	test -z "$$(git status --porcelain -- clients/python/versioner)"

## bench: throughput and latency as ratios to a null service (see BENCHMARKS.md).
bench: $(STAMP) $(STUBS)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
