"""Render `serving/serve_config.yaml` for one model version and deploy it to a Ray cluster.

`mlops serve` uses this with a detached local cluster (`ray start --head`, sized for this
machine) so the command returns with serving left running; tests use it with an in-process
`ray.init`. Either way the deployed config is the committed file with three things filled in:
the resolved `models:/<name>/<version>`, the tracking URI replicas must use, and host/port.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from ml.config import Settings

SERVE_NAMESPACE = "serve"
APP_NAME = "model"
DEPLOYMENT_NAME = "ModelServer"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
HAPROXY_METRICS_ENV = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
CLUSTER_FILE = "cluster.json"


class ServeError(RuntimeError):
    """Serving could not be started, updated or reached; the message says what to do."""


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ServeError(f"{path}: no such Serve config")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ServeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or not config.get("applications"):
        raise ServeError(f"{path}: expected a Serve config with `applications`")
    return config


def model_deployment(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelServer deployment entry of the model application."""
    for application in config.get("applications", []):
        if application.get("name") == APP_NAME:
            for deployment in application.get("deployments", []):
                if deployment.get("name") == DEPLOYMENT_NAME:
                    return deployment
    raise ServeError(
        f"the Serve config has no deployment {DEPLOYMENT_NAME!r} in application " f"{APP_NAME!r}"
    )


def render_config(
    config: dict[str, Any],
    *,
    model_uri: str,
    settings: Settings,
    port: int | None = None,
    num_replicas: int | None = None,
    num_cpus: float | None = None,
    max_batch_size: int | None = None,
) -> dict[str, Any]:
    """A copy of `config` for one resolved model version; validated by Ray's own schema."""
    from ray.serve.schema import ServeDeploySchema

    rendered = copy.deepcopy(config)
    rendered.setdefault("http_options", {})
    rendered["http_options"]["host"] = settings.serve_host
    rendered["http_options"]["port"] = port or settings.serve_port
    application = next(app for app in rendered["applications"] if app.get("name") == APP_NAME)
    env_vars = application.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env_vars.update(replica_env(settings))
    deployment = model_deployment(rendered)
    user_config = deployment.setdefault("user_config", {})
    user_config["model_uri"] = model_uri
    user_config["max_request_rows"] = settings.max_batch_rows
    if max_batch_size is not None:
        user_config["max_batch_size"] = max_batch_size
    if num_replicas is not None:
        deployment["num_replicas"] = num_replicas
    if num_cpus is not None:
        deployment.setdefault("ray_actor_options", {})["num_cpus"] = num_cpus
    ServeDeploySchema.model_validate(rendered)
    return rendered


def replica_env(settings: Settings) -> dict[str, str]:
    """What replicas (other processes) need from our settings; no secrets here: those reach
    replicas through the cluster's own environment (`ray start` inherits it)."""
    env = {
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_LOG_DIR": str(settings.log_dir),
        "MLOPS_MODEL_NAME": settings.model_name,
    }
    if settings.elasticsearch_url:
        env["ELASTICSEARCH_URL"] = settings.elasticsearch_url
    return env


def write_config(rendered: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return path


def deploy(rendered: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Start Serve (if needed) on the connected cluster and apply the config; wait for it."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(rendered)
    # What `serve run <config>` does, without blocking: start Serve with the config's HTTP
    # options, then hand the whole config to the controller.
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema, _blocking=False)
    wait_running(timeout_s)


def wait_running(timeout_s: float) -> None:
    """Until the model application is RUNNING; a failed deploy is reported with Serve's words."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = "NOT_STARTED"
    message = ""
    while time.monotonic() < deadline:
        application = serve.status().applications.get(APP_NAME)
        if application is not None:
            status, message = str(application.status), application.message
            deployment = application.deployments.get(DEPLOYMENT_NAME)
            if status.endswith("RUNNING") and deployment is not None:
                return
            if status.endswith("DEPLOY_FAILED"):
                details = deployment.message if deployment is not None else ""
                raise ServeError(f"deploying failed: {message or details}")
        time.sleep(0.5)
    raise ServeError(
        f"the model application is not running after {timeout_s:.0f}s "
        f"(status {status}: {message})"
    )


def wait_version(base_url: str, version: str, timeout_s: float, samples: int = 8) -> None:
    """Until `samples` consecutive `/version` answers name `version` (every replica swapped)."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                answers = [
                    http.get(f"{base_url}/version").json().get("model_version")
                    for _ in range(samples)
                ]
            except (httpx.HTTPError, ValueError):
                answers = []
            if answers and all(answer == version for answer in answers):
                return
            seen = answers
            time.sleep(0.5)
        last_load = _last_load(http, base_url)
    raise ServeError(
        f"serving did not switch to version {version} within {timeout_s:.0f}s "
        f"(replicas answer {sorted(set(seen))}; last load: {last_load})"
    )


def _last_load(http: httpx.Client, base_url: str) -> Any:
    try:
        return http.get(f"{base_url}/health").json().get("last_load")
    except (httpx.HTTPError, ValueError):
        return "unknown"


def serving_version(base_url: str) -> dict[str, Any] | None:
    """What `/version` answers, or None when nothing serves there."""
    try:
        response = httpx.get(f"{base_url}/version", timeout=2)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- the detached local cluster --------------------------------------------------------------


def ray_env(haproxy: bool) -> dict[str, str]:
    """Environment for the Ray processes (set before `ray start` / `ray.init`).

    HAProxy mode when Debian's haproxy is there: it replaces Ray's Python HTTP proxy (about 5x
    the throughput on 2 cores). Serve's throughput-optimized mode runs handlers on the
    replica's own event loop instead of a second thread's, one cross-thread hop less per
    request (1 replica, concurrency 64: 476 -> 665 req/s, benchmarks/serving.py). Proxy
    readiness checks get 30 s instead of 5 s: on a loaded 2-core machine the proxy can take
    longer than that to start and is then killed in a loop.

    HAProxy's per-request metrics are off: with them, HAProxy sends a log line per request to
    the HAProxyManager actor, which parses it in Python (about a tenth of a core at 1,400
    req/s; concurrency 64: 1,390-1,470 -> 1,730-1,870 req/s). Without them the replicas count
    the same `serve_num_http_requests` family themselves (Ray's direct-ingress metrics,
    accumulated in-process), so nothing is lost.
    """
    env = {
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray runs workers at nice 15 (batch work yields to drivers): replicas serve requests,
        # so they run at normal priority.
        "RAY_worker_niceness": "0",
        # Token auth, explicitly: with the mode unset, a driver attaching to a `ray start`
        # cluster does not always send the token (~/.ray/auth_token) and is refused.
        AUTH_MODE_ENV: "token",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }
    binary = haproxy_binary()
    if haproxy and binary:
        env[HAPROXY_ENV] = "1"
        env[HAPROXY_BINARY_ENV] = binary
        env[HAPROXY_METRICS_ENV] = "0"
    else:
        env[HAPROXY_ENV] = "0"
    return env


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None


def start_local_cluster(state_dir: Path, num_cpus: int, dashboard_port: int, haproxy: bool) -> bool:
    """`ray start --head` on loopback unless ours (recorded in `state_dir`) already runs.

    The GCS port is a free one, recorded in `state_dir/cluster.json`: Ray's own "current
    cluster" file is machine-wide and names whichever cluster started last (a test session's,
    another checkout's), and the default GCS port 6379 allows only one such cluster per host.
    The port identifies the cluster; Ray picks the node's IP itself.
    Returns True when this call started the cluster.
    """
    if local_cluster_address(state_dir) is not None:
        return False
    gcs_port = _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    command = [
        ray_bin,
        "start",
        "--head",
        f"--port={gcs_port}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
    ]
    result = subprocess.run(
        command, env={**os.environ, **ray_env(haproxy)}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ServeError(f"`ray start` failed: {result.stderr.strip()[-800:]}")
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster_file(state_dir).write_text(
        json.dumps({"started_by": "mlops serve", "gcs_port": gcs_port})
    )
    return True


def cluster_file(state_dir: Path) -> Path:
    """Where `mlops serve` records the cluster it started (address, who started it)."""
    return state_dir / CLUSTER_FILE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_local_cluster(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the cluster `start_local_cluster` started, and only it: its processes are the ones
    started with its GCS address (plus their children: workers, haproxy). `ray stop` would
    end every Ray process on the machine, other people's test clusters included."""
    import psutil

    address = local_cluster_address(state_dir)
    cluster_file(state_dir).unlink(missing_ok=True)
    if address is None:
        return False
    port = address.rsplit(":", 1)[1]
    # --address: Ray's client server (port 10001) names the GCS only that way.
    markers = (f"--gcs-address={address}", f"--gcs_server_port={port}", f"--address={address}")
    ours: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(marker in cmdline for marker in markers):
            ours[process.pid] = process
            for child in _children(process):
                ours[child.pid] = child
    for process in ours.values():
        _signal(process, kill=False)
    _, alive = psutil.wait_procs(list(ours.values()), timeout=timeout_s)
    for process in alive:
        _signal(process, kill=True)
    return True


def _children(process: Any) -> list[Any]:
    import psutil

    try:
        return list(process.children(recursive=True))
    except psutil.Error:
        return []


def _signal(process: Any, kill: bool) -> None:
    import psutil

    try:
        if kill:
            process.kill()
        else:
            process.terminate()
    except psutil.Error:
        pass


def local_cluster_running(state_dir: Path) -> bool:
    """True while the cluster `mlops serve` started for this state directory runs."""
    return local_cluster_address(state_dir) is not None


def local_cluster_address(state_dir: Path) -> str | None:
    """The GCS address of the cluster recorded in `state_dir`, if it still runs.

    Read from the live processes' `--gcs-address` flags: Ray's `find_gcs_addresses` caches its
    first answer per process, so it misses a cluster started after it was first asked.
    """
    import psutil

    try:
        port = int(json.loads(cluster_file(state_dir).read_text())["gcs_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    flag_suffix = f":{port}"
    for process in psutil.process_iter(["cmdline"]):
        for arg in process.info["cmdline"] or []:
            if arg.startswith("--gcs-address=") and arg.endswith(flag_suffix):
                return str(arg.split("=", 1)[1])
    return None


def connect(state_dir: Path) -> None:
    """Attach this process to our local cluster as a driver in Serve's namespace."""
    import ray

    if ray.is_initialized():
        return
    address = local_cluster_address(state_dir)
    if address is None:
        raise ServeError("no local Ray cluster is running: start serving with `mlops serve`")
    _use_token_auth()
    ray.init(
        address=address,
        namespace=SERVE_NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def _use_token_auth() -> None:
    """Token auth for this driver, as the cluster was started (`ray_env`). Ray caches the mode
    when it is first imported, so setting the variable is not enough once `ray` is loaded."""
    os.environ[AUTH_MODE_ENV] = "token"
    try:
        from ray._private.authentication import authentication_token_setup
    except ImportError:
        return
    authentication_token_setup._enable_token_auth()  # pylint: disable=protected-access


def init_local_ray(num_cpus: int = 2, attempts: int = 3) -> None:
    """An in-process local Ray (tests, benchmark), sized for this machine. Ray gives its raylet
    a fixed 30 s to register; on a machine loaded by other work that can pass, so retry."""
    import ray

    _use_token_auth()  # the same mode as the processes it starts (ray_env)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                namespace=SERVE_NAMESPACE,
                object_store_memory=200 * 1024 * 1024,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            return
        except Exception as exc:  # pylint: disable=broad-exception-caught
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
