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
# Matplotlib's font cache (and config) with the other caches, not in ~/.cache or ~/.config.
export MPLCONFIGDIR ?= $(CACHE_DIR)/matplotlib
# No usage reports from our runs (Ray's are off in serving.local_cluster.ray_env); `=false` opts in.
export MLFLOW_DISABLE_TELEMETRY ?= true
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup lock run stop pipeline data train ct-run test test-unit test-integration \
	test-resilience soak lint format typecheck clean mlflow-ui

help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap.sh scripts/system-packages.txt
	scripts/bootstrap.sh
	@touch $@

setup: $(STAMP) ## Install system packages and the pinned Python environment (idempotent)

lock: ## Re-resolve requirements.lock from pyproject.toml's ranges
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

run: setup ## The main job: train on the bundled data, gate, serve the champion, watch the host
	$(BIN)/mlops pipeline
	$(BIN)/mlops serve
	scripts/monitor.sh start

stop: setup ## Stop what `make run` left running (serving, the local Ray cluster, the collector)
	scripts/monitor.sh stop
	$(BIN)/mlops serve-stop

pipeline: setup ## The whole training chain on the configured data (MLOPS_DATA, MLOPS_TARGET)
	$(BIN)/mlops pipeline

data: setup ## Validate and fingerprint the configured data; report in var/reports/
	$(BIN)/mlops data

train: setup ## Tune, register a challenger, run the promotion gate
	$(BIN)/mlops train

ct-run: setup ## Continuous training: retrain when a trigger fires (exit 0 when none does)
	$(BIN)/mlops ct run

# Two pytest workers, a test file each at a time: a sequential run leaves the 2-core machine idle
# a third of the time while servers start and stop. xdist's own order (files with the most tests
# first) measured faster than slow files first, which made them overlap (README, Tests). The
# tests that compare latencies measured at two moments (marker `serial`) run after, alone; the
# second run's exit 5 (no test selected) is a PYTEST_ARGS that names none, not a failure.
TEST_WORKERS ?= 2
test: setup filebeat elastalert ## Every test tier (unit, contracts, integration, e2e, slow, resilience); CI runs this
	@mkdir -p $(REPORTS_DIR)
	@status=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --serial=skip --cov --cov-report= \
		--junitxml=$(REPORTS_DIR)/junit.xml $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/pytest --serial=only --cov --cov-append --cov-report=xml:$(REPORTS_DIR)/coverage.xml \
		--cov-report=term --junitxml=$(REPORTS_DIR)/junit-serial.xml $(PYTEST_ARGS) \
		|| { code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	exit $$status

test-unit: setup ## Fast tests, no servers
	$(BIN)/pytest tests/unit -m "not integration" $(PYTEST_ARGS)

test-integration: setup filebeat elastalert ## Tests that start real servers
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

test-resilience: setup filebeat ## The fault matrix (docs/reliability.md): real servers under faults
	$(BIN)/pytest tests/resilience -m resilience $(PYTEST_ARGS)

SOAK_S ?= 600
soak: setup ## 50 users against 2 serving replicas for SOAK_S s (600); figures in reports/
	@mkdir -p $(REPORTS_DIR)
	MLOPS_SOAK_S=$(SOAK_S) $(BIN)/pytest tests/resilience/test_replicas.py -k soak -s $(PYTEST_ARGS)

lint: setup ## flake8, black --check, pylint, hadolint (all run; reports/ for SonarQube)
	@$(MAKE) -k lint-style lint-black lint-pylint lint-hadolint

format: setup ## Rewrite the code with black
	$(BIN)/black ml serving elk tests benchmarks

typecheck: setup ## mypy over ml, serving, elk; report in reports/mypy.txt
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/mypy --no-pretty --show-column-numbers --show-error-codes | tee $(REPORTS_DIR)/mypy.txt

mlflow-ui: setup ## The MLflow UI on the local store, http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(VAR_DIR)/mlflow.db" --port 5000

clean: ## Remove generated state (var/, reports/, caches); keeps the download cache
	rm -rf $(VAR_DIR) $(REPORTS_DIR) .pytest_cache .mypy_cache .coverage coverage.xml htmlcov
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

# --- containers, Minikube (dev) and prod --------------------------------------------------------
# IMAGE and TAG: the serving image `docker-build` tags and the minikube overlay deploys
# (`make manifests` writes them into k8s/overlays/minikube/image.yaml). REGISTRY is the registry
# and namespace images are pushed to (e.g. registry.example.com/team): `docker-push` refuses an
# IMAGE without one, which Docker would send to docker.io/library. Override from the environment
# or the command line, e.g. `make docker-push REGISTRY=registry.example.com/team`.
REGISTRY ?=
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/mlops-serving,mlops-serving)
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_SHA := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DOCKER ?= docker
# What `docker-push` pushed, as REPOSITORY@sha256:...: the one image dev and prod both run.
IMAGE_DIGEST_FILE ?= $(VAR_DIR)/image-digest
# build: `deploy-minikube` builds the image inside Minikube; docker: it loads IMAGE:TAG from
# the Docker engine (the image `docker-push` pushed, so dev runs the digest prod will run).
MINIKUBE_IMAGE_SOURCE ?= build
export REGISTRY IMAGE TAG IMAGE_DIGEST_FILE MINIKUBE_IMAGE_SOURCE

.PHONY: docker-build docker-push manifests deploy-minikube deploy-prod
docker-build: ## Build the serving image IMAGE:TAG (TAG: the project version; also git-<sha>)
	$(DOCKER) build --pull -t $(IMAGE):$(TAG) -t $(IMAGE):git-$(GIT_SHA) \
		--label org.opencontainers.image.version=$(TAG) \
		--label org.opencontainers.image.revision=$(GIT_SHA) .

docker-push: ## Push IMAGE:TAG and :git-<sha> to REGISTRY; record the digest in IMAGE_DIGEST_FILE
	$(if $(findstring /,$(IMAGE)),,$(error docker-push: IMAGE=$(IMAGE) names no registry \
		namespace and would go to docker.io/library: set REGISTRY, e.g. \
		REGISTRY=registry.example.com/team))
	@registry=$${IMAGE%%/*}; case "$$registry" in *.*|*:*|localhost) ;; *) registry= ;; esac; \
	if [ -n "$${REGISTRY_USER:-}" ]; then \
		printf '%s' "$${REGISTRY_PASSWORD:?REGISTRY_PASSWORD is not set}" \
			| $(DOCKER) login --username "$$REGISTRY_USER" --password-stdin $$registry; \
	fi
	$(DOCKER) push $(IMAGE):$(TAG)
	$(DOCKER) push $(IMAGE):git-$(GIT_SHA)
	@mkdir -p $(dir $(IMAGE_DIGEST_FILE))
	$(DOCKER) image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(IMAGE):$(TAG) \
		| grep -m1 '^$(IMAGE)@sha256:' > $(IMAGE_DIGEST_FILE)
	@echo "pushed $$(cat $(IMAGE_DIGEST_FILE))"

manifests: setup ## Regenerate the generated k8s/ files (serveConfigV2, filebeat.yml, IMAGE:TAG)
	$(BIN)/python scripts/render_k8s.py --image $(IMAGE):$(TAG)

deploy-minikube: manifests ## dev: Minikube + KubeRay + the whole stack, smoke-tested (DRY_RUN=1 prints)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/deploy_minikube.sh

deploy-prod: setup ## prod: the pushed digest (IMAGE_DIGEST_FILE) to the KUBECONFIG cluster, smoke-tested
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/deploy_prod.sh

# --- code quality, SonarQube, CI (jenkins/pipelines/quality.Jenkinsfile runs these) ----------
# Each tool writes its report under REPORTS_DIR in the format sonar-project.properties imports.
PY_CODE := ml serving elk tests benchmarks jenkins
PY_PACKAGES := ml serving elk
# Every Dockerfile in the tree (the serving image, jenkins/Dockerfile, any later one).
DOCKERFILES = $(shell find . \( -path ./.venv -o -path ./var -o -path ./.git \) -prune -o \
	\( -name Dockerfile -o -name '*.Dockerfile' -o -name 'Dockerfile.*' \) -print \
	| sed 's|^\./||' | sort)
# Accepted pip-audit advisories: one ID per line with its reason (jenkins/pip-audit-accepted.txt).
PIP_AUDIT_IGNORES = $(shell awk '!/^[[:space:]]*(\#|$$)/ {print "--ignore-vuln", $$1}' \
	jenkins/pip-audit-accepted.txt)
SONAR_HOST_URL ?= http://127.0.0.1:9000
# The local JRE runs the scanner engine (no JRE download); the scanner needs Java 21+, so the
# first of JAVA_HOME, /usr/lib/jvm/* and PATH that is new enough.
SONAR_JAVA ?= $(shell for java in "$${JAVA_HOME:-/nonexistent}/bin/java" /usr/lib/jvm/*/bin/java \
	"$$(command -v java)"; do [ -x "$$java" ] && "$$java" -XshowSettings:properties -version 2>&1 \
	| awk '/java.specification.version/ {exit !($$3 >= 21)}' && { echo "$$java"; break; }; \
	done)
# `make watch` re-runs this on every change of a tracked file.
WATCH_CMD ?= $(MAKE) ci
WATCH_ROOT ?= $(CURDIR)
WATCH_ARGS ?=
NOTIFY_STATUS ?= success
NOTIFY_TITLE ?= $(or $(JOB_NAME),mlops) \#$(or $(BUILD_NUMBER),local)
NOTIFY_BODY ?= $(or $(BUILD_URL),$(CURDIR))
# Jenkins mails a failed build itself (emailext, with the log): it passes desktop then
NOTIFY_CHANNELS ?= email,desktop
# passed through the environment, so quotes or `$` in a job name cannot break the command
export NOTIFY_STATUS NOTIFY_TITLE NOTIFY_BODY NOTIFY_CHANNELS

.PHONY: lint-style lint-black lint-pylint lint-hadolint security security-bandit \
	security-audit quality test-coverage ci sonar watch notify
lint-style: setup ## flake8 (pycodestyle, pyflakes) -> reports/flake8.txt
	@mkdir -p $(REPORTS_DIR)
	@: > $(REPORTS_DIR)/flake8.txt  # flake8 leaves an old report untouched when all is clean
	$(BIN)/flake8 --output-file=$(REPORTS_DIR)/flake8.txt --tee $(PY_CODE)

lint-black: setup ## black --check -> reports/black.diff (what `make format` would change)
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/black --check --diff $(PY_CODE) > $(REPORTS_DIR)/black.diff

lint-pylint: setup ## pylint (fails under 9.0) -> reports/pylint.txt (parseable)
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/pylint --output-format=parseable $(PY_PACKAGES) | tee $(REPORTS_DIR)/pylint.txt

lint-hadolint: setup ## hadolint on every Dockerfile -> reports/hadolint.sarif
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/hadolint --failure-threshold warning $(DOCKERFILES)
	$(BIN)/hadolint --no-fail -f sarif $(DOCKERFILES) > $(REPORTS_DIR)/hadolint.sarif

security: setup ## bandit (no medium/high finding) and pip-audit of requirements.lock
	@$(MAKE) -k security-bandit security-audit

security-bandit: setup ## bandit -> reports/bandit.json; fails on medium or high severity
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/bandit -q -c pyproject.toml -r $(PY_PACKAGES) -f json -o $(REPORTS_DIR)/bandit.json \
		--exit-zero
	$(BIN)/bandit -q -c pyproject.toml -r $(PY_PACKAGES) --severity-level medium

# The recipe fails with 1 for a vulnerability not accepted, 3 ("Error 3") when nothing or not
# everything was audited (the advisory DB unreachable): jenkins/pip_audit_gate.py says so in
# one line, writes no pip-audit.json and keeps pip-audit's output as pip-audit.unaudited.json.
security-audit: setup ## pip-audit of requirements.lock -> reports/pip-audit.json (exit 3: not audited)
	$(BIN)/python jenkins/pip_audit_gate.py --report $(REPORTS_DIR)/pip-audit.json -- \
		$(BIN)/pip-audit --requirement requirements.lock --no-deps --disable-pip \
		--progress-spinner off $(PIP_AUDIT_IGNORES)

quality: setup ## Every check (lint, typecheck, security); all run, any failure fails
	@$(MAKE) -k lint typecheck security

test-coverage: setup ## Unit + contract tests with coverage -> reports/coverage.xml, junit.xml
	@mkdir -p $(REPORTS_DIR)
	$(BIN)/pytest tests/unit tests/contracts --cov --cov-report=xml:$(REPORTS_DIR)/coverage.xml \
		--cov-report=term --junitxml=$(REPORTS_DIR)/junit.xml $(PYTEST_ARGS)

ci: setup ## What the quality pipeline runs, minus SonarQube: every check and every test
	@$(MAKE) -k quality test

sonar: setup ## SonarQube analysis + quality gate wait (SONAR_HOST_URL, SONAR_TOKEN)
	@test -n "$${SONAR_TOKEN:-$${SONAR_AUTH_TOKEN:-}}" \
		|| { echo "sonar: set SONAR_TOKEN (Jenkins: withSonarQubeEnv sets SONAR_AUTH_TOKEN)" >&2; \
		exit 2; }
	@test -x "$(SONAR_JAVA)" || { echo "sonar: no Java 21+ (JAVA_HOME, /usr/lib/jvm, PATH)" >&2; \
		exit 2; }
	SONAR_TOKEN="$${SONAR_TOKEN:-$$SONAR_AUTH_TOKEN}" $(BIN)/pysonar \
		--sonar-host-url "$(SONAR_HOST_URL)" --skip-jre-provisioning \
		--sonar-user-home "$(CACHE_DIR)/sonar" \
		--sonar-scanner-java-exe-path "$(SONAR_JAVA)" --sonar-qualitygate-wait \
		--sonar-qualitygate-timeout 600

watch: setup ## Re-run WATCH_CMD (default `make ci`) whenever a tracked file changes
	$(BIN)/python jenkins/watch.py --root "$(WATCH_ROOT)" --command "$(WATCH_CMD)" $(WATCH_ARGS)

notify: setup ## Email + desktop notification (NOTIFY_STATUS, NOTIFY_TITLE, NOTIFY_BODY)
	$(BIN)/mlops notify --status "$$NOTIFY_STATUS" --title "$$NOTIFY_TITLE" --body "$$NOTIFY_BODY" \
		--channels "$$NOTIFY_CHANNELS"

# --- serving (Ray Serve) -------------------------------------------------------------------
SERVE_URL ?= http://127.0.0.1:$(or $(MLOPS_SERVE_PORT),8000)
LOADTEST_USERS ?= 50
LOADTEST_TIME ?= 60s

.PHONY: serve serve-stop loadtest bench-serving mlserver docs-screenshots
serve: setup ## Serve the champion with Ray Serve, detached (HAProxy mode); prints the URLs
	$(BIN)/mlops serve

serve-stop: setup ## Stop serving, and the local Ray cluster `make serve` started
	$(BIN)/mlops serve-stop

loadtest: setup ## Locust, 50 users for 60 s against the champion (served if not yet); var/reports/
	@mkdir -p $(VAR_DIR)/reports
	$(BIN)/mlops serve
	$(BIN)/locust -f tests/load/locustfile.py --headless --host $(SERVE_URL) \
		--users $(LOADTEST_USERS) --spawn-rate 25 --run-time $(LOADTEST_TIME) --only-summary \
		--html $(VAR_DIR)/reports/loadtest.html --csv $(VAR_DIR)/reports/loadtest \
		--exit-code-on-error 1

docs-screenshots: setup ## Refresh docs/images/*.png: the /ui and /docs browser test, shots kept
	MLOPS_SCREENSHOTS_DIR=$(CURDIR)/docs/images $(BIN)/pytest -q tests/integration/test_serving_ui.py

bench-serving: setup mlserver ## Ours vs MLServer, a bare limit server, mlflow (wrk, 3 rounds); BENCH_ARGS=--quick
	$(BIN)/python benchmarks/serving.py $(BENCH_ARGS)

mlserver: ## MLServer 1.7.1 in its own pinned venv, once (cached in CACHE_DIR): bench-serving's peer
	scripts/mlserver.sh setup >/dev/null

# --- benchmarks (tables and ratios; never part of `make test`) ------------------------------
.PHONY: bench-training
bench-training: setup ## Optuna vs RandomizedSearchCV (same space, budget) + MLflow tracking cost
	$(BIN)/python benchmarks/training.py $(BENCH_ARGS)

.PHONY: bench-training-short
bench-training-short: setup ## The same races with 3+1 seeds and 2 tracking pairs (~15 min): before/after
	$(BIN)/python benchmarks/training.py --short $(BENCH_ARGS)

.PHONY: bench-storage
bench-storage: setup ## Optuna storages per trial: our SQLite, plain RDB, journal file (1 and 2 workers)
	$(BIN)/python benchmarks/study_storage.py $(BENCH_ARGS)

.PHONY: bench-automl flaml
bench-automl: setup flaml ## Our tuning vs FLAML AutoML (our families / all), 4 datasets x 3 seeds, 60 s
	$(BIN)/python benchmarks/automl.py $(BENCH_ARGS)

flaml: ## FLAML 2.8 in its own venv pinned to the lock's scikit-learn/numpy/pandas, once (CACHE_DIR)
	scripts/flaml.sh setup >/dev/null

.PHONY: bench-decision
bench-decision: setup ## Holdout F1 at 0.5 vs at the tuned threshold on an imbalanced table
	$(BIN)/python benchmarks/decision.py $(BENCH_ARGS)

# --- observability (ELK) ---------------------------------------------------------------------
.PHONY: monitor monitor-setup monitor-ship monitor-drift elasticsearch-dev bench-telemetry filebeat \
	elastalert alerts
monitor: setup ## Host/container/Ray metrics every MLOPS_MONITOR_INTERVAL_S to NDJSON or Elasticsearch
	$(BIN)/mlops monitor run

monitor-setup: setup ## Elasticsearch templates (ELASTICSEARCH_URL) + Kibana dashboards (KIBANA_URL)
	$(BIN)/mlops monitor setup

monitor-ship: setup ## Bulk-ship var/log/*.ndjson to ELASTICSEARCH_URL, resuming from saved offsets
	$(BIN)/mlops monitor ship

monitor-drift: setup ## Recent serving inputs vs the champion's training profile; email on drift
	$(BIN)/mlops monitor drift

kube-score: setup ## kube-score's container security checks on both overlays (built once from its Go module)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/kube_score.sh check k8s/overlays/minikube k8s/overlays/prod

filebeat: ## Build the tests' Filebeat 7.17 from its Go module once (needs Go; cached in CACHE_DIR)
	scripts/filebeat.sh build >/dev/null

elastalert: ## ElastAlert 2.19.0 in its own pinned venv, once (cached in CACHE_DIR)
	scripts/elastalert.sh setup >/dev/null

alerts: setup elastalert ## Run the alert rules (elk/alerts/rules) on ELASTICSEARCH_URL, mail via SMTP_*
	scripts/elastalert.sh run

elasticsearch-dev: ## A local Elasticsearch 8.19 for development (scripts/elasticsearch.sh start)
	scripts/elasticsearch.sh start

bench-telemetry: setup ## Bulk docs/s into a local Elasticsearch, emit() cost, collector CPU at 1 Hz
	$(BIN)/python benchmarks/telemetry.py $(BENCH_ARGS)
