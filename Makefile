# PixelRPC — every target creates .venv and installs what it needs, so a fresh clone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0

.PHONY: install test demo lint protos check-protos docs check-docs bench compose-test scale-test clean help

help:
	@echo "make demo          install, then run the demo on the embedded default models"
	@echo "make test          install, then run the test suite (includes the generated-code and docs drift checks)"
	@echo "make lint          ruff + buf lint"
	@echo "make protos        regenerate protos/pixelrpc/{v1,inference}/*_pb2*.py(i)"
	@echo "make docs          regenerate docs/api.md (from the proto comments) and docs/configuration.md's table"
	@echo "make bench         run the benchmarks in bench/"
	@echo "make compose-test  build the image and test the docker-compose deployment (not part of make test)"
	@echo "make scale-test    replicas behind nginx and client round_robin, under load and faults (not part of make test)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[serve,dev]'
	@touch $(STAMP)

install: $(STAMP)

# One protoc command line for both (scripts/check_protos.py): google/rpc/status.proto is imported
# from the installed googleapis-common-protos package.
protos: $(STAMP)
	$(PY) scripts/check_protos.py --write

check-protos: $(STAMP)
	$(PY) scripts/check_protos.py

# Generated documentation: docs/api.md from the proto comments, the settings table of
# docs/configuration.md from services/settings.py. check-docs regenerates in memory and diffs.
docs: $(STAMP)
	$(PY) scripts/gen_api_docs.py --write
	$(PY) scripts/gen_config_docs.py --write

check-docs: $(STAMP)
	$(PY) scripts/gen_api_docs.py
	$(PY) scripts/gen_config_docs.py

test: $(STAMP) check-protos check-docs
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP) check-protos
	$(VENV)/bin/ruff check .
	@if [ ! -x node_modules/.bin/buf ]; then npm install --no-save --silent --no-audit --no-fund @bufbuild/buf@$(BUF_VERSION); fi
	mkdir -p build/proto-deps/google/rpc
	cp "$$($(PY) -c 'from google.rpc import status_pb2; print(status_pb2.__file__.removesuffix("_pb2.py") + ".proto")')" \
		build/proto-deps/google/rpc/status.proto
	node_modules/.bin/buf lint

demo: $(STAMP)
	$(PY) -m pixelrpc.cli.demo

# Every benchmark records its rows (bench/results.py); the run ends with one table of them all.
BENCH_RESULTS := build/bench-results.jsonl
bench: $(STAMP)
	@mkdir -p build && rm -f $(BENCH_RESULTS)
	for b in bench/*.py; do case $$b in bench/results.py|bench/procfs.py) continue;; esac; echo "== $$b"; \
		PIXELRPC_BENCH_RESULTS=$(CURDIR)/$(BENCH_RESULTS) $(PY) $$b || exit 1; done
	$(PY) bench/results.py $(BENCH_RESULTS)

compose-test:
	bash scripts/compose_test.sh

# Scale-out on this machine (scripts/scale_test.py, docs/scaling.md): needs Debian's nginx.
scale-test: $(STAMP)
	@command -v nginx > /dev/null || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nginx; } \
		|| { echo "install nginx (apt-get install nginx)"; exit 1; }
	OMP_NUM_THREADS=1 PIXELRPC_TORCH_THREADS=1 $(PY) scripts/scale_test.py

clean:
	rm -rf build dist *.egg-info demo-output .pytest_cache
