"""scripts/elasticsearch.sh starts a real Elasticsearch that the Python client can use, then stops.

Tests and developers rely on the script (not a mock) for every Elasticsearch-backed test, so this
checks the whole contract: start prints the URL, start is idempotent, status tells the truth, and
stop really frees the port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
ES_SCRIPT = REPO_ROOT / "scripts" / "elasticsearch.sh"
EXPECTED_MAJOR_MINOR = "8.19."


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _run_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A cold run downloads ~100 MB before starting; 600 s leaves room for a slow mirror.
    return subprocess.run(
        [str(ES_SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def es_env() -> Iterator[dict[str, str]]:
    """Environment for one throw-away instance: its own VAR_DIR and free ports."""
    # Not pytest's tmp_path: that lives under a 0700 directory, and Elasticsearch runs as an
    # unprivileged user (it refuses root) that must be able to reach its home directory.
    var_dir = Path(tempfile.mkdtemp(prefix="mlops-es-test-"))
    var_dir.chmod(0o755)
    http_port = _free_port()
    transport_port = _free_port()
    while transport_port == http_port:
        transport_port = _free_port()
    env = {
        **os.environ,
        "VAR_DIR": str(var_dir),
        "ES_PORT": str(http_port),
        "ES_TRANSPORT_PORT": str(transport_port),
    }
    yield env
    # Teardown must never leave a JVM behind, even when the test failed half-way.
    _run_script("stop", env)
    shutil.rmtree(var_dir)


def test_elasticsearch_script_starts_indexes_and_stops(es_env: dict[str, str]) -> None:
    """Start (twice), use with the client, stop: what every ES-backed test relies on."""
    port = int(es_env["ES_PORT"])
    expected_url = f"http://127.0.0.1:{port}"

    started = _run_script("start", es_env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == expected_url
    assert _run_script("url", es_env).stdout.strip() == expected_url
    assert _run_script("status", es_env).returncode == 0

    again = _run_script("start", es_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == expected_url
    assert "already running" in again.stderr

    client = Elasticsearch(expected_url, request_timeout=30)
    # The integ-test-zip distribution has no rest-root module, so `GET /` (client.info()) answers
    # 405; the node info API reports the same version.
    nodes = client.nodes.info(node_id="_local")["nodes"]
    versions = [node["version"] for node in nodes.values()]
    assert len(versions) == 1 and versions[0].startswith(EXPECTED_MAJOR_MINOR), versions

    client.index(
        index="mlops-script-test",
        id="1",
        document={"@timestamp": "2026-01-01T00:00:00Z", "service": {"name": "mlops"}},
        refresh="wait_for",
    )
    assert client.count(index="mlops-script-test")["count"] == 1
    client.close()

    stopped = _run_script("stop", es_env)
    assert stopped.returncode == 0, stopped.stderr
    assert not _port_open(port)
    assert _run_script("status", es_env).returncode != 0
    # Stop is idempotent: teardown calls it again on an already stopped instance.
    assert _run_script("stop", es_env).returncode == 0
