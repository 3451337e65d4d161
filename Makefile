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

# --- containers and Minikube -----------------------------------------------------------------
# IMAGE and TAG: the serving image `docker-build` tags and the minikube overlay deploys
# (`make manifests` writes them into k8s/overlays/minikube/image.yaml). Override from the
# environment or the command line, e.g. `make docker-push IMAGE=registry.example.com/team/mlops-serving`.
IMAGE ?= mlops-serving
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_SHA := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DOCKER ?= docker
export IMAGE TAG

.PHONY: docker-build docker-push manifests deploy-minikube
docker-build: ## Build the serving image IMAGE:TAG (TAG: the project version; also git-<sha>)
	$(DOCKER) build --pull -t $(IMAGE):$(TAG) -t $(IMAGE):git-$(GIT_SHA) \
		--label org.opencontainers.image.version=$(TAG) \
		--label org.opencontainers.image.revision=$(GIT_SHA) .

docker-push: ## Push IMAGE:TAG and :git-<sha> (login from REGISTRY_USER/REGISTRY_PASSWORD if set)
	@registry=$${IMAGE%%/*}; case "$$registry" in *.*|*:*|localhost) ;; *) registry= ;; esac; \
	if [ -n "$${REGISTRY_USER:-}" ]; then \
		printf '%s' "$${REGISTRY_PASSWORD:?REGISTRY_PASSWORD is not set}" \
			| $(DOCKER) login --username "$$REGISTRY_USER" --password-stdin $$registry; \
	fi
	$(DOCKER) push $(IMAGE):$(TAG)
	$(DOCKER) push $(IMAGE):git-$(GIT_SHA)

manifests: setup ## Regenerate the generated k8s/ files (serveConfigV2, filebeat.yml, IMAGE:TAG)
	$(BIN)/python scripts/render_k8s.py --image $(IMAGE):$(TAG)

deploy-minikube: manifests ## Minikube + KubeRay + the whole stack, smoke-tested (DRY_RUN=1 prints)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/deploy_minikube.sh
