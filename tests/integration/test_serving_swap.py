"""Model swaps on a real Ray Serve with 2 replicas: a failed load keeps the old model serving,
and a promotion under load (through `mlops promote`'s `after_promote` hook) swaps the version
without one failed request. Registers its own model (`served-swap`) so the session's champion
does not move; redeploys the session's model when done."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ml.config import Settings
from ml.data import load_frame
from ml.registry import CHAMPION, promote
from serving.cli import after_promote
from serving.deploy import ServeError
from serving.lifecycle import start_serving, update_serving
from tests.fixtures.ray_serve import ServeApp

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SWAP_MODEL = "served-swap"


@dataclass
class LoadLoop:
    """Closed-loop clients posting single records until stopped (bounded in count and time)."""

    base_url: str
    record: dict
    threads: int = 4
    max_seconds: float = 300.0
    max_requests: int = 50_000
    statuses: Counter = field(default_factory=Counter)
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.sent >= self.max_requests:
                    return
                try:
                    response = client.post("/predict", json=self.record)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.statuses["connection error"] += 1
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        self.versions.append(response.json()["model_version"])
                    else:
                        self.errors.append(response.text[:200])


@pytest.fixture(scope="module")
def swap_settings(serve_app: ServeApp) -> Iterator[Settings]:
    """`served-swap` versions 1 and 2 (the session model's artifact, registered twice),
    version 1 champion, served by 2 replicas; the session's model is served again after."""
    mlflow.set_tracking_uri(serve_app.settings.mlflow_tracking_uri)
    client = MlflowClient()
    source = client.get_model_version(serve_app.model.name, serve_app.model.version).source
    for _ in range(2):
        mlflow.register_model(source, SWAP_MODEL)
    client.set_registered_model_alias(SWAP_MODEL, CHAMPION, "1")
    settings = serve_app.settings.model_copy(update={"model_name": SWAP_MODEL})
    start_serving(settings, port=serve_app.port, num_replicas=2, num_cpus=0.5, local_cluster=False)
    yield settings
    serve_app.deploy(serve_app.model.version)


def _record() -> dict:
    row = load_frame("demo").drop(columns=["target"]).iloc[:1]
    return json.loads(row.to_json(orient="records"))[0]


def test_a_failed_load_keeps_the_old_model_serving(
    swap_settings: Settings, serve_app: ServeApp
) -> None:
    with pytest.raises(ServeError, match="did not switch to version 99"):
        update_serving(swap_settings, version="99", timeout_s=20)
    with httpx.Client(base_url=serve_app.base_url, timeout=30) as client:
        for _ in range(6):  # both replicas answer
            health = client.get("/health").json()
            assert health["status"] == "ready"
            assert health["last_load"]["status"] == "failed"
            assert "models:/served-swap/99" in health["last_load"]["model_uri"]
            assert client.get("/version").json()["model_version"] == "1"
        assert client.post("/predict", json=_record()).status_code == 200
    update_serving(swap_settings, version="1")  # a good config again


def test_promotion_under_load_swaps_without_a_failed_request(
    swap_settings: Settings, serve_app: ServeApp
) -> None:
    loop = LoadLoop(serve_app.base_url, _record())
    loop.start()
    try:
        time.sleep(3)
        # Both URIs given: the module fixture's `set_tracking_uri` is reset after each test,
        # and a bare client would open MLflow's default store, ./mlflow.db in the checkout.
        store = swap_settings.mlflow_tracking_uri
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        promote(client, SWAP_MODEL, "2", reason="swap under load test")
        after_promote(swap_settings, "2")  # what `mlops promote` runs: waits for the swap
        time.sleep(3)
    finally:
        loop.stop()
    assert loop.sent > 50
    assert loop.statuses == Counter({200: loop.sent}), loop.errors[:5]
    assert loop.versions[0] == "1" and loop.versions[-1] == "2"
    assert set(loop.versions) == {"1", "2"}
    with httpx.Client(base_url=serve_app.base_url, timeout=30) as client:
        assert {client.get("/version").json()["model_version"] for _ in range(6)} == {"2"}


def _versions_answered(base_url: str, samples: int = 8) -> set[str]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return {client.get("/version").json()["model_version"] for _ in range(samples)}


def _until_served(base_url: str, version: str, polls: int = 240) -> None:
    """Until every sampled answer names `version` (bounded in polls of half a second)."""
    for _ in range(polls):
        if _versions_answered(base_url) == {version}:
            return
        time.sleep(0.5)
    raise AssertionError(f"serving never answered only version {version}")


def test_replicas_following_the_alias_take_a_promotion_and_a_rollback_under_load(
    swap_settings: Settings, serve_app: ServeApp
) -> None:
    """What compose and KubeRay deploy (user_config names models:/<name>@champion): nothing
    redeploys; a promotion moves the alias, the replicas re-resolve it and swap in place, and
    a rollback (`mlops promote --version 1`) travels the same way, without a failed request."""
    from serving import deploy
    from serving.lifecycle import config_path

    store = swap_settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    promote(client, SWAP_MODEL, "1", reason="follow test: start at 1")
    rendered = deploy.render_config(
        deploy.read_config(config_path(swap_settings)),
        model_uri=f"models:/{SWAP_MODEL}@{CHAMPION}",
        settings=swap_settings,
        port=serve_app.port,
        num_replicas=2,
        num_cpus=0.5,
    )
    deploy.model_deployment(rendered)["user_config"]["alias_poll_s"] = 1.0
    deploy.deploy(rendered)
    _until_served(serve_app.base_url, "1")
    loop = LoadLoop(serve_app.base_url, _record())
    loop.start()
    try:
        promote(client, SWAP_MODEL, "2", reason="follow test: promotion")
        _until_served(serve_app.base_url, "2")
        promote(client, SWAP_MODEL, "1", reason="follow test: rollback")
        _until_served(serve_app.base_url, "1")
    finally:
        loop.stop()
    assert loop.sent > 50
    assert loop.statuses == Counter({200: loop.sent}), loop.errors[:5]
    assert set(loop.versions) == {"1", "2"}
    health = httpx.get(f"{serve_app.base_url}/health", timeout=30).json()
    assert health["following"]["model_uri"] == f"models:/{SWAP_MODEL}@{CHAMPION}"
    assert health["following"]["last_poll"]["status"] == "ok"
