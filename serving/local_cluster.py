"""The local Ray cluster `mlops serve` runs on, and every piece of state it owns.

A cluster belongs to one checkout's state directory (`var/serve/`) and shares nothing with
the user's home or with other clusters on the machine:

- Ray's token auth reads `var/serve/ray_auth_token` (created here, mode 0600) through
  `RAY_AUTH_TOKEN_PATH`, never `~/.ray/auth_token`; a `RAY_AUTH_TOKEN` in the caller's
  environment is not passed on, as it would take precedence over the file.
- Ray's session files (`--temp-dir`) and Ray Serve's HAProxy config, sockets and server state
  live in a short runtime directory derived from the state directory (`/tmp/mlops-<hash>`:
  HAProxy refuses socket paths over 97 characters, and Ray adds a 56-character node id).
- Its ports are free ones, recorded in `var/serve/cluster.json`: the GCS, Ray's client server
  (default 10001), the dashboard agent (default 52365), HAProxy's stats and metrics listeners
  (8404, 9101) and Serve's fallback proxy (8500). The serving and dashboard ports are
  settings, as users open them.

Tests and benchmarks run an in-process cluster (`in_process_cluster`) isolated the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml.common.net import free_port

if TYPE_CHECKING:
    import psutil

SERVE_NAMESPACE = "serve"
CLUSTER_FILE = "cluster.json"
TOKEN_FILE = "ray_auth_token"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
HAPROXY_METRICS_ENV = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
HAPROXY_CONFIG_ENV = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
HAPROXY_PORTS = ("stats_port", "metrics_port", "fallback_port")
CLUSTER_PORTS = ("gcs_port", "client_port", "agent_port", *HAPROXY_PORTS)
# Fixed, not tempfile.gettempdir(): a long TMPDIR would push the sockets past HAProxy's limit.
# A predictable name under /tmp is safe only as a directory of ours: ensure_private_dir.
RUNTIME_ROOT = Path("/tmp")  # nosec B108
HAPROXY_SUBDIR = "hap"  # /tmp/mlops-<10>/hap/<node id>/metrics.sock: 95 characters


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached; the message says what to do."""


@dataclass(frozen=True)
class ClusterLayout:
    """Where one cluster keeps its state: `state_dir` (in the checkout) and a short runtime
    directory outside it for the paths with length limits."""

    state_dir: Path

    @property
    def record(self) -> Path:
        return self.state_dir / CLUSTER_FILE

    @property
    def token(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def runtime_dir(self) -> Path:
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        return RUNTIME_ROOT / f"mlops-{digest}"

    @property
    def ray_temp_dir(self) -> Path:
        return self.runtime_dir / "ray"

    @property
    def haproxy_dir(self) -> Path:
        return self.runtime_dir / HAPROXY_SUBDIR


# --- environment ----------------------------------------------------------------------------


def ray_env(haproxy: bool) -> dict[str, str]:
    """Environment for the Ray processes (set before `ray start` / `ray.init`), the same in
    the serving image (a contract test keeps them equal); per-cluster paths, ports and auth
    come from `cluster_env`.

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
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # A stopping replica behind HAProxy first stays reachable this long so load balancers
        # can deregister it (Ray's default, 30 s, is sized for cloud ones), then refuses new
        # connections (HAProxy retries another replica) and drains. 30 s is longer than the
        # deployment's graceful_shutdown_timeout_s (20 s): every stop ended in a force-kill,
        # the replica's destructor (the telemetry flush) never ran, and `make stop` took 75 s.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
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


def haproxy_env(haproxy_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    """Serve's HAProxy state in `haproxy_dir` instead of the machine-wide /tmp/haproxy-serve/
    (Serve adds the node id below it), and `ports` (HAPROXY_PORTS) instead of the fixed ones
    of ray/serve/_private/constants.py: HAProxy's stats (8404) and metrics (9101) listeners and
    the Python fallback proxy behind it (8500). The replicas' own direct-ingress ports need
    nothing: Serve tries the next one of its range when one is taken."""
    return {
        HAPROXY_CONFIG_ENV: str(haproxy_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy_dir / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["stats_port"]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["metrics_port"]),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports["fallback_port"]),
    }


def free_ports(*names: str) -> dict[str, int]:
    return {name: free_port() for name in names}


def ensure_token(path: Path) -> Path:
    """The cluster's auth token file, created once (random, 0600) and kept with the cluster's
    state; an existing one is kept and its mode tightened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        if not path.read_text().strip():
            raise ClusterError(f"{path}: the Ray auth token file is empty; delete it") from None
        return path
    with os.fdopen(descriptor, "w") as token_file:
        token_file.write(secrets.token_hex(32))
    return path


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory only this user can enter: created 0700, or, when it exists,
    refused unless it is a real directory (not a symlink) of this user's. Its name under /tmp
    is predictable, so another user could otherwise plant it, or a link, first."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ClusterError(f"{path}: exists, but is not a directory of this user's; remove it")
    path.chmod(0o700)
    return path


def auth_env(token: Path) -> dict[str, str]:
    return {AUTH_MODE_ENV: "token", AUTH_TOKEN_PATH_ENV: str(token)}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment for a Ray process, with `extra` over it and no inherited
    RAY_AUTH_TOKEN (it would override the cluster's token file)."""
    env = {key: value for key, value in os.environ.items() if key != AUTH_TOKEN_ENV}
    env.update(extra)
    return env


# --- the detached cluster (`mlops serve`) ----------------------------------------------------


def start_local_cluster(state_dir: Path, num_cpus: int, dashboard_port: int, haproxy: bool) -> bool:
    """`ray start --head` on loopback unless ours (recorded in `state_dir`) already runs.

    Ray's own "current cluster" file and default ports are machine-wide (another checkout's
    cluster, a test session's); every port here is a free one and Ray's temp dir is this
    cluster's own, so none of them is shared. Returns True when this call started it.
    """
    layout = ClusterLayout(state_dir)
    if local_cluster_address(state_dir) is not None:
        return False
    ensure_private_dir(layout.runtime_dir)
    # A cluster whose GCS or raylet died (kill -9, `ray stop --force`, a crash) leaves
    # processes behind: HAProxy still holding the serving port, the dashboard its port.
    # They serve a dead cluster and keep nothing worth a grace period.
    _end_processes(cluster_processes(layout), timeout_s=1.0)
    shutil.rmtree(layout.haproxy_dir, ignore_errors=True)
    ports = free_ports(*CLUSTER_PORTS)
    env = child_env(
        {
            **ray_env(haproxy),
            **auth_env(ensure_token(layout.token)),
            **haproxy_env(layout.haproxy_dir, ports),
        }
    )
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        f"--port={ports['gcs_port']}",
        f"--ray-client-server-port={ports['client_port']}",
        f"--dashboard-agent-listen-port={ports['agent_port']}",
        f"--temp-dir={layout.ray_temp_dir}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"`ray start` failed: {result.stderr.strip()[-800:]}")
    layout.record.write_text(json.dumps({"started_by": "mlops serve", **ports}))
    return True


def stop_local_cluster(state_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the cluster `start_local_cluster` started, and only it (`cluster_processes`: its
    processes and their children, workers and HAProxy included). `ray stop` would end every
    Ray process on the machine, other people's test clusters included. Returns False when
    the cluster was not running (what a dead one left behind is ended all the same).

    SIGTERM, then SIGKILL after `timeout_s`, as `ray stop` does (its grace period is 10-16 s).
    The GCS server and the autoscaler's monitor did not exit on SIGTERM within 30 s (the raylet
    took 12 s, the rest 2 s, under load), so a longer grace only made `make stop` wait: Serve's
    replicas are already stopped gracefully by then, and the GCS keeps no state to save."""
    layout = ClusterLayout(state_dir)
    running = local_cluster_address(state_dir) is not None
    layout.record.unlink(missing_ok=True)
    _end_processes(cluster_processes(layout), timeout_s)
    # Ray's session logs stay in layout.ray_temp_dir for a post-mortem; HAProxy's state goes.
    shutil.rmtree(layout.haproxy_dir, ignore_errors=True)
    return running


def cluster_processes(layout: ClusterLayout) -> list[psutil.Process]:
    """Every live process of the cluster of `layout`, with its children, also when its GCS or
    raylet died and the rest were orphaned. Ray's daemons name the runtime directory in their
    command line, its workers in their environment (the HAProxy paths `ray start` was given),
    HAProxy in its config path; agents that overwrite both with their title
    (`ray::DashboardAgent`) hold their logs there open. This process (a driver) is left out."""
    import psutil

    marker = f"{layout.runtime_dir}/"
    ours: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline", "name"]):
        if process.pid == os.getpid() or not _belongs_to(process, marker):
            continue
        ours[process.pid] = process
        for child in _children(process):
            ours[child.pid] = child
    ours.pop(os.getpid(), None)
    return list(ours.values())


def _belongs_to(process: psutil.Process, marker: str) -> bool:
    import psutil

    try:
        if marker in " ".join(process.info["cmdline"] or []):
            return True
        if marker in process.environ().get(HAPROXY_CONFIG_ENV, ""):
            return True
        # Only Ray's retitled processes: reading every process's open files costs more.
        if not (process.info["cmdline"] or [""])[0].startswith("ray::"):
            return False
        return any(opened.path.startswith(marker) for opened in process.open_files())
    except psutil.Error:
        return False


def _end_processes(processes: list[psutil.Process], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL for what is still there after `timeout_s`."""
    import psutil

    for process in processes:
        _signal(process, kill=False)
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        _signal(process, kill=True)
    psutil.wait_procs(alive, timeout=5)


def _children(process: psutil.Process) -> list[psutil.Process]:
    import psutil

    try:
        return list(process.children(recursive=True))
    except psutil.Error:
        return []


def _signal(process: psutil.Process, kill: bool) -> None:
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
    """The GCS address of the cluster recorded in `state_dir`, if it still runs: its GCS
    server and its raylet are both alive. Ray's other daemons (dashboard, monitor, log
    monitor) carry the GCS address too, and outlive a killed GCS by minutes: they alone are
    a dead cluster, which `start_local_cluster` clears away.

    Read from the live processes' flags: Ray's `find_gcs_addresses` caches its first answer
    per process, so it misses a cluster started after it was first asked.
    """
    import psutil

    try:
        port = int(json.loads(ClusterLayout(state_dir).record.read_text())["gcs_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    gcs_flag, address_suffix = f"--gcs_server_port={port}", f":{port}"
    gcs_alive, raylet_address = False, None
    for process in psutil.process_iter(["cmdline", "name"]):
        args = process.info["cmdline"] or []
        if process.info["name"] == "gcs_server" and gcs_flag in args:
            gcs_alive = True
        elif process.info["name"] == "raylet":
            for arg in args:
                if arg.startswith("--gcs-address=") and arg.endswith(address_suffix):
                    raylet_address = arg.split("=", 1)[1]
    return raylet_address if gcs_alive else None


def connect(state_dir: Path) -> None:
    """Attach this process to our local cluster as a driver in Serve's namespace, with the
    cluster's token."""
    layout = ClusterLayout(state_dir)
    address = local_cluster_address(state_dir)
    if address is None:
        raise ClusterError("no local Ray cluster is running: start serving with `mlops serve`")
    if not layout.token.is_file():
        raise ClusterError(f"{layout.token}: the cluster's auth token is missing")
    use_driver_auth(auth_env(layout.token))
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        namespace=SERVE_NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def use_driver_auth(env: dict[str, str]) -> None:
    """Put this driver process in token auth (`auth_env`) with the cluster's token file:
    Ray's documented set-up, `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH`.

    Ray reads the mode once, when it is imported, so the variables must be set before that;
    the CLI sets them before it imports Ray. Where Ray was imported earlier (a test session),
    `reread_ray_auth` makes it read them again.
    """
    in_place = AUTH_TOKEN_ENV not in os.environ and all(
        os.environ.get(name) == value for name, value in env.items()
    )
    os.environ.pop(AUTH_TOKEN_ENV, None)
    os.environ.update(env)
    if "ray" in sys.modules and not in_place:
        reread_ray_auth()


def prepare_driver(state_dir: Path) -> None:
    """Before this process imports Ray: the auth settings of the cluster in `state_dir` (its
    token is created if this is the first cluster of the checkout)."""
    use_driver_auth(auth_env(ensure_token(ClusterLayout(state_dir).token)))


def reread_ray_auth() -> None:
    """Make an already imported Ray read its auth mode and token from the environment again.

    The one place this project reaches into Ray's internals for auth, because no public API
    does this (Ray 2.60 documents only the environment variables, the token file and
    `ray get-auth-token`, all read once per process): Ray caches the mode in its config when
    it is imported, and its token loader keeps the first token it read for the process's
    lifetime. A process that imported Ray before the variables were set (a test session), or
    that drives a second cluster with another token file (a benchmark's next round), was
    otherwise refused by that cluster's GCS (InvalidAuthToken). What `ray.init` itself runs
    when it turns token auth on (`_enable_token_auth`: `Config.initialize("")`), plus the
    token loader's reset. tests/unit/test_local_cluster.py checks that it still works, so an
    upgrade that moves these names fails there rather than in `mlops serve`.
    """
    from ray._raylet import (  # type: ignore[attr-defined]  # pylint: disable=no-name-in-module
        AuthenticationTokenLoader,
        Config,
    )

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# --- in-process clusters (tests, benchmarks) ------------------------------------------------


@contextmanager
def in_process_cluster(num_cpus: int = 2, haproxy: bool = True) -> Iterator[None]:
    """An in-process local Ray with Serve (tests, benchmarks), isolated like a detached one:
    its own token, HAProxy paths and ports (os.environ, which Ray's processes inherit; restored
    on exit). Token auth is Ray's default for a new local cluster, and the token comes from the
    file, so nothing is read from or written to `~/.ray`. Serve and Ray are shut down on exit."""
    import ray
    from ray import serve

    runtime_dir = Path(tempfile.mkdtemp(prefix="mlops-", dir=RUNTIME_ROOT))
    env = {
        **ray_env(haproxy),
        AUTH_TOKEN_PATH_ENV: str(ensure_token(runtime_dir / TOKEN_FILE)),
        **haproxy_env(runtime_dir / HAPROXY_SUBDIR, free_ports(*HAPROXY_PORTS)),
    }
    cleared = (AUTH_TOKEN_ENV, AUTH_MODE_ENV)  # Ray sets the mode itself, see above
    saved = {name: os.environ.get(name) for name in (*env, *cleared)}
    for name in cleared:
        os.environ.pop(name, None)
    os.environ.update(env)
    reread_ray_auth()
    try:
        _init_local_ray(num_cpus)
        try:
            yield
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _init_local_ray(num_cpus: int, attempts: int = 3) -> None:
    """Sized for this machine. Ray gives its raylet a fixed 30 s to register; on a machine
    loaded by other work that can pass, so retry."""
    import ray

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
