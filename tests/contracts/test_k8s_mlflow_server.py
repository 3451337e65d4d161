"""The MLflow server command line of k8s/ and docker-compose.yml, run for real.

PostgreSQL, MinIO and a cluster are not here, so the storage flags point at SQLite and a
temporary directory and the server listens on loopback; every other flag and the
`MLFLOW_SERVER_ALLOWED_HOSTS` value are the manifests' own. The point: MLflow 3 rejects
requests whose Host header it does not know (DNS-rebinding guard), and in the cluster the
model server and the training Job reach it as `mlflow:5000`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.contracts.test_k8s import OVERLAY, render
from tests.fixtures.mlflow_server import free_port, stop_process, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"

pytestmark = [pytest.mark.contracts, pytest.mark.integration]


def mlflow_container() -> dict[str, Any]:
    (deployment,) = [
        d
        for d in render(OVERLAY)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    ]
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def local_command(command: list[str], tmp_path: Path, port: int) -> list[str]:
    """The manifest's command with only storage and the listening address made local."""
    local = {
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
    }
    rewritten = [str(Path(sys.executable).with_name(command[0]))]
    for argument in command[1:]:
        flag = argument.split("=", 1)[0]
        rewritten.append(f"{flag}={local[flag]}" if flag in local else argument)
    return rewritten


@pytest.fixture(scope="module")
def manifest_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    container = mlflow_container()
    tmp_path = tmp_path_factory.mktemp("mlflow-k8s")
    port = free_port()
    env = dict(os.environ)
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    process = subprocess.Popen(
        local_command(container["command"], tmp_path, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base_url}/health", timeout_s=120, process=process)
        yield base_url
    finally:
        stop_process(process, timeout_s=30)


@pytest.mark.parametrize(
    "host",
    [
        "mlflow:5000",
        "mlflow",
        "mlflow.mlops.svc.cluster.local:5000",
        "localhost:5000",
        "127.0.0.1:5000",
    ],
)
def test_cluster_clients_are_accepted(manifest_mlflow: str, host: str) -> None:
    response = httpx.get(manifest_mlflow + SEARCH, headers={"Host": host}, timeout=10)
    assert response.status_code == 200, response.text


def test_unknown_hosts_are_still_rejected(manifest_mlflow: str) -> None:
    response = httpx.get(
        manifest_mlflow + SEARCH, headers={"Host": "evil.example:5000"}, timeout=10
    )
    assert response.status_code == 403


def test_compose_allows_the_compose_service_name() -> None:
    """docker-compose.yml's MLflow runs the same server: its host list covers `mlflow:5000`."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    allowed = compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    from mlflow.server.security_utils import is_allowed_host_header

    hosts = [host.strip() for host in allowed.split(",")]
    assert is_allowed_host_header(hosts, "mlflow:5000")
    assert not is_allowed_host_header(hosts, "evil.example:5000")
