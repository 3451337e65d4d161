"""The smoke request of scripts/deploy_minikube.sh against the real model server.

Minikube is not here, but the server the RayService runs is: the session's Ray Serve
(`serve_app`: serving/serve_config.yaml, the registered demo model, HAProxy mode as in the
image). The script's `/health` check and its `/predict` body must work there as they would
through the port-forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ray_serve import ServeApp

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_REQUEST = REPO_ROOT / "k8s" / "smoke" / "predict.json"

pytestmark = [pytest.mark.contracts, pytest.mark.integration]


def test_smoke_requests_succeed_on_the_real_server(serve_app: ServeApp) -> None:
    health = httpx.get(f"{serve_app.base_url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    response = httpx.post(
        f"{serve_app.base_url}/predict",
        content=SMOKE_REQUEST.read_bytes(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] in {"malignant", "benign"}
    assert abs(sum(prediction["probabilities"].values()) - 1.0) < 1e-6


def test_smoke_request_is_one_record(serve_app: ServeApp) -> None:
    """A mangled smoke body is refused with a 4xx naming the field, not a 500."""
    record = json.loads(SMOKE_REQUEST.read_text())
    record.pop(next(iter(record)))
    response = httpx.post(f"{serve_app.base_url}/predict", json=record, timeout=60)
    assert 400 <= response.status_code < 500
