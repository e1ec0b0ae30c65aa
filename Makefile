# crmflow — every target sets up what it needs: a virtualenv in .venv, the Python package, and (as root)
# the Debian packages the local stack runs on. Kafka and the registry come from Maven Central on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_CUSTOMERS ?= 20000
DEMO_DIR ?= $(CURDIR)/.crmflow/demo-data
DEMO_CHANGES ?= 40
DEMO_CHANGE_SECONDS ?= 25

.PHONY: help setup system-deps venv stack stack-secure stack-down demo test test-unit test-integration test-e2e test-secure lint bench clean

help:
	@echo "make demo   - set everything up, start the local stack, migrate generated sample data, then a parallel run (CDC)"
	@echo "make test   - set everything up and run all tests (unit, integration, e2e)"
	@echo "make test-unit | test-integration | test-e2e | test-secure | lint | bench | stack | stack-secure | stack-down | clean"

# Debian packages: Java 17 and Maven for Kafka/Apicurio, the PostgreSQL server, Prometheus (promtool),
# Chromium, headless, which the tests open every HTML report in, and for the secure stack (`stack up --secure`)
# nginx (TLS + basic auth in front of the registry) and openssl (its certificates).
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || missing="$$missing nginx"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing — run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

setup: system-deps venv

stack: setup
	$(BIN)/crmflow stack up

stack-secure: setup
	$(BIN)/crmflow stack up --secure

stack-down:
	-$(BIN)/crmflow stack down
	-$(BIN)/crmflow stack down --secure

# The demo: generate the legacy CRM (CSV files, also loaded into the stack's legacy database), migrate the files,
# then the parallel run on the legacy database: cdc + process + sink keep a target schema in step while a change
# workload runs, and it prints the end-to-end latency and whether the target equals the legacy tables.
demo: stack
	eval "$$($(BIN)/crmflow stack env | grep '^export CRMFLOW_LEGACY_DSN=')"; \
	$(BIN)/crmflow demo-data --out $(DEMO_DIR) --customers $(DEMO_CUSTOMERS) --seed 7 --legacy-dsn "$$CRMFLOW_LEGACY_DSN"
	CRMFLOW_DEMO_DATA=$(DEMO_DIR) $(BIN)/crmflow migrate -c deploy/demo/crmflow.yaml --workers 2
	$(BIN)/crmflow parallel-run -c deploy/demo/crmflow-cdc.yaml --reset --changes $(DEMO_CHANGES) --seconds $(DEMO_CHANGE_SECONDS)

test: setup
	$(BIN)/python tests/run_suite.py $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

test-e2e: setup
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

# The secure local stack's tests (they start it, ports + 100, unless CRMFLOW_STACK=local-secure names one);
# the also_secure e2e tests run on the stack CRMFLOW_STACK names: set it to local-secure for them.
test-secure: setup
	$(BIN)/pytest -m "secure or also_secure" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check crmflow producers processors sinks tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: stack
	$(BIN)/crmflow bench --customers 100000 --workers 2

clean: stack-down
	rm -rf $(VENV) .crmflow .pytest_cache .mypy_cache .ruff_cache
