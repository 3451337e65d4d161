# Every CI/CD stage is a target here; Jenkinsfiles only call `make <target>`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Downloads (wheels, Elasticsearch, SonarQube) are cached here, outside the checkout, so a
# fresh clone on the same machine reuses them.
CACHE_DIR ?= $(HOME)/.cache/mlops
VAR_DIR ?= $(CURDIR)/var
REPORTS_DIR ?= $(CURDIR)/reports
export CACHE_DIR VAR_DIR REPORTS_DIR PYTHON VENV
export MLOPS_VAR_DIR ?= $(VAR_DIR)
export UV_CACHE_DIR := $(CACHE_DIR)/uv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup lock run pipeline data train test test-unit test-integration lint format \
	typecheck clean mlflow-ui

help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap.sh scripts/system-packages.txt
	scripts/bootstrap.sh
	@touch $@

setup: $(STAMP) ## Install system packages and the pinned Python environment (idempotent)

lock: ## Re-resolve requirements.lock from pyproject.toml's ranges
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

run: setup ## The main job: train on the bundled data, gate, report the champion
	$(BIN)/mlops pipeline

pipeline: setup ## The whole training chain on the configured data (MLOPS_DATA, MLOPS_TARGET)
	$(BIN)/mlops pipeline

data: setup ## Validate and fingerprint the configured data; report in var/reports/
	$(BIN)/mlops data

train: setup ## Tune, register a challenger, run the promotion gate
	$(BIN)/mlops train

test: setup ## Every test tier (unit, contracts, integration, e2e, slow); CI runs this
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/pytest --cov --cov-report=xml:$(REPORTS_DIR)/coverage.xml --cov-report=term \
		--junitxml=$(REPORTS_DIR)/junit.xml $(PYTEST_ARGS)

test-unit: setup ## Fast tests, no servers
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ## Tests that start real servers
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

lint: setup ## flake8 and black --check
	$(BIN)/flake8 ml serving elk tests benchmarks
	$(BIN)/black --check ml serving elk tests benchmarks

format: setup ## Rewrite the code with black
	$(BIN)/black ml serving elk tests benchmarks

typecheck: setup ## mypy over ml, serving, elk
	$(BIN)/mypy

mlflow-ui: setup ## The MLflow UI on the local store, http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(VAR_DIR)/mlflow.db" --port 5000

clean: ## Remove generated state (var/, reports/, caches); keeps the download cache
	rm -rf $(VAR_DIR) $(REPORTS_DIR) .pytest_cache .mypy_cache .coverage coverage.xml htmlcov
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
