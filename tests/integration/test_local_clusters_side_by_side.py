"""Two detached local clusters (`mlops serve`'s kind) side by side, for real.

Each belongs to its own state directory, as two checkouts' would. They run at the same time
in HAProxy mode, in an empty HOME that holds somebody else's `~/.ray/auth_token` and under a
stray `RAY_AUTH_TOKEN`: neither is needed nor breaks anything, neither is touched, and stopping
one cluster leaves no process, listening port or HAProxy state of it behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from serving.local_cluster import (
    CLUSTER_PORTS,
    ClusterLayout,
    free_port,
    local_cluster_address,
    start_local_cluster,
    stop_local_cluster,
)
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

FOREIGN_TOKEN = "somebody-elses-token"
# A driver as `mlops serve` is one: a fresh process that attaches with the cluster's token and
# deploys an app through HAProxy on the given port.
DRIVER = """
import sys
from pathlib import Path
from serving.local_cluster import connect

state, port = Path(sys.argv[1]), int(sys.argv[2])
connect(state)
from ray import serve

@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
class Hello:
    def __call__(self, request) -> str:
        return f"served from {state}"

serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Hello.bind(), name="hello", route_prefix="/")
"""


@pytest.fixture
def foreign_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(FOREIGN_TOKEN)
    return home


@pytest.fixture
def user_env(foreign_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's shell with none of the test session's Ray settings, a foreign token in it."""
    for name in list(os.environ):
        if name.startswith("RAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(foreign_home))
    monkeypatch.setenv("RAY_AUTH_TOKEN", FOREIGN_TOKEN)
    return dict(os.environ)


@pytest.fixture
def clusters(tmp_path: Path, user_env: dict[str, str]) -> Iterator[list[Path]]:
    state_dirs = [tmp_path / name / "var" / "serve" for name in ("first", "second")]
    try:
        for state_dir in state_dirs:
            assert start_local_cluster(state_dir, 1, free_port(), haproxy=True)
        yield state_dirs
    finally:
        for state_dir in state_dirs:
            stop_local_cluster(state_dir)


def test_two_clusters_serve_side_by_side_and_stop_without_a_trace(
    clusters: list[Path], user_env: dict[str, str], foreign_home: Path
) -> None:
    records = [json.loads(ClusterLayout(state).record.read_text()) for state in clusters]
    ports = [{name: record[name] for name in CLUSTER_PORTS} for record in records]
    assert not set(ports[0].values()) & set(ports[1].values())
    serve_ports = [free_port(), free_port()]
    for state_dir, port in zip(clusters, serve_ports):
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, str(state_dir), str(port)],
            cwd=REPO_ROOT,
            env=user_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
    for state_dir, port in zip(clusters, serve_ports):
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert answer.status_code == 200 and answer.text == f"served from {state_dir}"
        layout = ClusterLayout(state_dir)
        assert layout.token.read_text() != FOREIGN_TOKEN
        assert any(layout.haproxy_dir.rglob("haproxy.cfg")), "HAProxy not in its own dir"
        assert _listening(ports[clusters.index(state_dir)]["stats_port"])

    first, second = clusters
    address = local_cluster_address(first)
    assert address is not None
    assert stop_local_cluster(first)
    assert not _processes_of(address), "a process of the stopped cluster is still running"
    assert not _listening(serve_ports[0])
    assert not any(_listening(port) for port in ports[0].values())
    assert not ClusterLayout(first).haproxy_dir.exists()
    # the other cluster is untouched, and so is the foreign token
    assert httpx.get(f"http://127.0.0.1:{serve_ports[1]}/", timeout=30).status_code == 200
    assert local_cluster_address(second) is not None
    assert (foreign_home / ".ray" / "auth_token").read_text() == FOREIGN_TOKEN
    assert sorted(path.name for path in (foreign_home / ".ray").iterdir()) == ["auth_token"]


def _processes_of(address: str) -> list[int]:
    marker = f"--gcs-address={address}"
    return [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if marker in " ".join(process.info["cmdline"] or [])
    ]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


SEQUENTIAL = """
from ray import serve
from serving.local_cluster import in_process_cluster

@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
def hello(request) -> str:
    return "hello"

for round_number in range(2):
    with in_process_cluster(num_cpus=1, haproxy=False):
        handle = serve.run(hello.bind(), name="hello", route_prefix=None)
        assert handle.remote(None).result(timeout_s=60) == "hello"
    print("round", round_number, "ok", flush=True)
"""


def test_two_in_process_clusters_in_a_row_in_one_process(
    user_env: dict[str, str], foreign_home: Path
) -> None:
    """A benchmark runs rounds, each on a fresh in-process cluster with its own token file.
    Ray caches the first token it read, so the second cluster's GCS refused the driver
    (InvalidAuthToken) until in_process_cluster reset that cache."""
    run = subprocess.run(
        [sys.executable, "-c", SEQUENTIAL],
        cwd=REPO_ROOT,
        env=user_env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Ray's log lines (raylet, Serve) may land on stdout between the rounds' own lines
    rounds = [line for line in run.stdout.splitlines() if line.startswith("round ")]
    assert rounds == ["round 0 ok", "round 1 ok"], run.stdout[-3000:]
    assert (foreign_home / ".ray" / "auth_token").read_text() == FOREIGN_TOKEN
