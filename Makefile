# The two entry points: `make serve` (run the decision service) and `make test` (whole suite).
# Both do all set-up on a fresh machine: virtualenv, build of the Cython core, redis-server.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BUILD_LOCK := /tmp/limiter-build.lock

.PHONY: all venv build dist serve test lint bench docs redis-server clean

all: test

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q "cython>=3.0.10" "numpy>=1.26"
	# The distribution was once named `limiter`, like an unrelated PyPI project with the same
	# top-level package: neither may stay installed beside this one.
	$(PY) -m pip uninstall -q -y limiter
	$(PY) -m pip install -q -e '.[test,bench,otel]'
	# xds-protos carries its own, older copy of opentelemetry-proto's modules; whichever is
	# installed last wins, and the OTLP exporter needs opentelemetry-proto's.
	$(PY) -m pip install -q --no-deps --force-reinstall \
		"opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $(STAMP)

venv: $(STAMP)

# Rebuild the extension in place after editing ext/*.pyx|pxi (serialised: helpers may build concurrently).
build: venv
	flock $(BUILD_LOCK) $(PY) setup.py -q build_ext --inplace

# Release artefacts: the sdist and a wheel with the compiled core, into $(DIST). The wheel is
# built from this tree, reusing the objects `make build` compiled when they are up to date.
DIST ?= dist
dist: build
	rm -rf $(DIST) *.egg-info  # a stale egg-info's file list would leak into the sdist
	flock $(BUILD_LOCK) $(PY) -m build --no-isolation --sdist --wheel --outdir $(DIST) .

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q redis-server redis-tools; }

serve: build
	$(VENV)/bin/limiter serve --config examples/ratelimit.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: build redis-server lint
	$(PY) -m pytest -q tests

bench: build
	$(PY) benchmarks/core_bench.py

# The configuration reference, generated from the config schema (a test checks it is current).
docs: build
	$(PY) -m limiter.server.reference > docs/configuration.md

clean:
	rm -rf build dist $(VENV) limiter/_core.c limiter/*.so ext/*.c *.egg-info
