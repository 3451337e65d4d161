"""serving.service: load, swap, failure record, health/version answers and admin auth of one
replica, built with real settings, a loader over locally fitted models and an in-memory
telemetry collector (no Ray, no registry)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from ml.config import Settings
from ml.registry import RegistryError
from serving.model import Scored
from serving.schemas import RequestError, ServingOptions
from serving.service import ModelService
from tests.unit.serving_support import Registry, TelemetryCollector, demo_model, demo_rows

TOKEN = "s3cret-admin-token"  # noqa: S105 - a test value


def _options(version: str = "1", **more: Any) -> ServingOptions:
    return ServingOptions(model_uri=f"models:/demo/{version}", **more)


@pytest.fixture
def registry() -> Registry:
    return Registry({("demo", "1"): demo_model("1"), ("demo", "2"): demo_model("2")})


@pytest.fixture
def telemetry() -> TelemetryCollector:
    return TelemetryCollector()


def _service(
    tmp_path: Path, registry: Registry, telemetry: TelemetryCollector, token: str | None = TOKEN
) -> ModelService:
    settings = Settings(
        var_dir=tmp_path / "var", admin_token=None if token is None else SecretStr(token)
    )
    return ModelService(settings, registry, telemetry)


@pytest.fixture
def service(
    tmp_path: Path, registry: Registry, telemetry: TelemetryCollector
) -> Iterator[ModelService]:
    yield _service(tmp_path, registry, telemetry)
    gc.unfreeze()  # a load freezes what exists, as in a replica; give it back to the GC


def _loaded(service: ModelService, version: str = "1") -> ModelService:
    asyncio.run(service.apply(_options(version)))
    return service


# --- before any model ------------------------------------------------------------------------


def test_a_new_service_serves_nothing_and_says_so(service: ModelService) -> None:
    assert service.model is None
    assert service.last_load == {"status": "not started"}
    with pytest.raises(RequestError) as caught:
        service.require_model()
    assert (caught.value.status, caught.value.field) == (503, "model")
    with pytest.raises(RuntimeError, match="no model loaded"):
        service.check_health()
    health = service.health({"solo": 0})
    assert health.status == 503
    assert health.body["status"] == "not ready" and health.body["model_uri"] is None
    version = service.version()
    assert (version.status, version.body) == (
        503,
        {"detail": "no model is loaded yet", "field": "model"},
    )


def test_defaults_apply_until_configured(service: ModelService) -> None:
    assert (service.batch_size, service.max_rows) == (64, 10_000)
    _loaded(service)
    asyncio.run(service.apply(_options(max_batch_size=8, max_request_rows=50)))
    assert (service.batch_size, service.max_rows) == (8, 50)


# --- loading and swapping --------------------------------------------------------------------


def test_a_load_serves_the_version_and_freezes_the_gc(
    service: ModelService, registry: Registry
) -> None:
    gc.unfreeze()
    _loaded(service)
    assert registry.calls == [("demo", "1")]
    assert gc.get_freeze_count() > 0
    assert service.require_model().loaded.uri == "models:/demo/1"
    service.check_health()
    assert service.last_load["status"] == "loaded"
    assert service.last_load["model_uri"] == "models:/demo/1"
    assert service.last_load["duration_s"] >= 0


def test_health_and_version_answer_for_the_loaded_model(
    service: ModelService, telemetry: TelemetryCollector
) -> None:
    _loaded(service)
    telemetry.dropped = 3
    telemetry.queued = 2
    scoring = {"solo": 2, "batches": 1, "batched_requests": 5}
    health = service.health(scoring)
    assert health.status == 200
    assert health.body == {
        "status": "ready",
        "model_uri": "models:/demo/1",
        "last_load": service.last_load,
        "telemetry_dropped": 3,
        "telemetry_queued": 2,
        "scoring": scoring,
    }
    version = service.version()
    assert version.status == 200
    assert version.body == {
        "model_name": "demo",
        "model_version": "1",
        "model_uri": "models:/demo/1",
        "run_id": "run-1",
        "loaded_at": "2026-12-06T00:00:00+00:00",
        "task": "classification",
        "decision_threshold": None,  # a model logged without one: the most probable class
    }


def test_the_overview_without_a_registry_still_gives_the_form_its_features(
    service: ModelService,
) -> None:
    before = asyncio.run(service.overview())
    assert (before.status, before.body["field"]) == (503, "model")
    _loaded(service)
    body = asyncio.run(service.overview()).body
    assert body["model_version"] == "1" and body["classes"] == ["benign", "malignant"]
    assert [hint["name"] for hint in body["features"]] == service.model.validator.columns
    assert {hint["type"] for hint in body["features"]} == {"numeric"}
    assert body["errors"] == ["no registry"]
    assert body["example"] == demo_model("1").input_example.iloc[0].to_dict()
    assert body["ct"] == {"runs": [], "quality": []}


def test_a_good_load_swaps_the_model(service: ModelService) -> None:
    first = _loaded(service, "1").require_model()
    second = _loaded(service, "2").require_model()
    assert second is not first
    assert service.version().body["model_version"] == "2"


def test_a_failed_load_keeps_the_old_model_serving(service: ModelService) -> None:
    before = _loaded(service, "1").require_model()
    asyncio.run(service.apply(_options("99")))  # no such version: the loader raises
    assert service.require_model() is before
    assert service.last_load["status"] == "failed"
    assert service.last_load["model_uri"] == "models:/demo/99"
    assert "models:/demo/99" in service.last_load["error"]
    health = service.health({})
    assert (health.status, health.body["status"]) == (200, "ready")
    assert health.body["model_uri"] == "models:/demo/1"
    assert service.version().body["model_version"] == "1"


def test_a_replica_whose_first_load_fails_raises_and_records_it(service: ModelService) -> None:
    with pytest.raises(RegistryError):
        asyncio.run(service.apply(_options("99")))
    assert service.model is None
    assert service.last_load["status"] == "failed"
    assert service.health({}).status == 503
    with pytest.raises(RuntimeError):
        service.check_health()


def test_a_model_serving_cannot_build_fails_its_load_too(
    tmp_path: Path, telemetry: TelemetryCollector
) -> None:
    """Anything the loader returns goes through `ServedModel.of`: a broken model is a failed
    load, never a swap."""
    good = demo_model("1")
    broken = replace(demo_model("2"), classes=None)  # ServedModel.of cannot list them
    service = _service(tmp_path, Registry({("demo", "1"): good, ("demo", "2"): broken}), telemetry)
    _loaded(service, "1")
    asyncio.run(service.apply(_options("2")))
    assert service.require_model().loaded is good
    assert service.last_load["status"] == "failed"
    gc.unfreeze()


# --- user_config -----------------------------------------------------------------------------


def test_a_good_user_config_is_accepted(service: ModelService) -> None:
    options = service.accept({"model_uri": "models:/demo/2", "max_batch_size": 16})
    assert options is not None
    assert (options.model_name, options.model_version, options.max_batch_size) == ("demo", "2", 16)


def test_a_bad_user_config_without_a_model_raises(service: ModelService) -> None:
    with pytest.raises(ValidationError):
        service.accept({"model_uri": "models:/demo/latest"})


def test_a_bad_user_config_with_a_model_is_recorded_and_ignored(service: ModelService) -> None:
    _loaded(service)
    assert service.accept({"model_uri": "models:/demo/latest"}) is None
    assert service.last_load["status"] == "failed"
    assert service.last_load["model_uri"] == "models:/demo/latest"
    assert service.last_load["error"].startswith("bad user_config:")
    assert service.version().body["model_version"] == "1"


# --- admin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_admin_is_disabled_without_a_token(
    tmp_path: Path, registry: Registry, telemetry: TelemetryCollector, token: str | None
) -> None:
    service = _service(tmp_path, registry, telemetry, token=token)
    denied = service.admin_denial(f"Bearer {TOKEN}")
    assert denied is not None
    assert denied.status == 403
    assert denied.body == {
        "detail": "admin is disabled: set MLOPS_ADMIN_TOKEN",
        "field": "authorization",
    }


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN])
def test_admin_without_a_bearer_token_is_401_with_a_challenge(
    service: ModelService, header: str | None
) -> None:
    denied = service.admin_denial(header)
    assert denied is not None
    assert denied.status == 401
    assert denied.headers == {"WWW-Authenticate": "Bearer"}
    assert denied.body == {"detail": "a bearer token is required", "field": "authorization"}


@pytest.mark.parametrize("header", ["Bearer nope", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"])
def test_admin_with_a_wrong_token_is_403(service: ModelService, header: str) -> None:
    denied = service.admin_denial(header)
    assert denied is not None
    assert (denied.status, denied.body["detail"]) == (403, "wrong token")


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}"])
def test_admin_with_the_token_is_let_through(service: ModelService, header: str) -> None:
    assert service.admin_denial(header) is None


def test_reload_needs_the_token(service: ModelService, registry: Registry) -> None:
    _loaded(service)
    answer = asyncio.run(service.reload(None))
    assert answer.status == 401
    assert registry.calls == [("demo", "1")]


def test_reload_before_any_config_is_503(service: ModelService) -> None:
    answer = asyncio.run(service.reload(f"Bearer {TOKEN}"))
    assert (answer.status, answer.body) == (503, {"detail": "not configured yet", "field": "model"})


def test_reload_loads_the_configured_version_again(
    service: ModelService, registry: Registry
) -> None:
    _loaded(service, "2")
    answer = asyncio.run(service.reload(f"Bearer {TOKEN}"))
    assert answer.status == 200
    assert answer.body["last_load"]["status"] == "loaded"
    assert registry.calls == [("demo", "2"), ("demo", "2")]


def test_a_failed_reload_is_502_and_keeps_the_model(
    service: ModelService, registry: Registry
) -> None:
    _loaded(service, "2")
    del registry.models[("demo", "2")]
    answer = asyncio.run(service.reload(f"Bearer {TOKEN}"))
    assert answer.status == 502
    assert answer.body["last_load"]["status"] == "failed"
    assert service.version().body["model_version"] == "2"


# --- telemetry hand-off ----------------------------------------------------------------------


def test_a_scored_request_is_handed_to_telemetry(
    service: ModelService, telemetry: TelemetryCollector
) -> None:
    model = _loaded(service).require_model()
    rows = demo_rows(2).to_numpy(dtype=float)
    scored = Scored(model, model.predict_proba(rows))
    service.scored(scored, ["a", "b"], "/invocations", started=0.0, rows=rows)
    [event] = telemetry.scored
    assert event["model"] is model.loaded
    assert (event["ids"], event["labels"], event["route"]) == (
        ["a", "b"],
        scored.labels,
        "/invocations",
    )
    np.testing.assert_array_equal(event["proba"], scored.proba)
    assert event["inputs"][0] is rows and event["inputs"][1] == model.validator.columns
    assert event["latency_ms"] > 0


def test_a_rejected_request_is_handed_to_telemetry_with_the_model(
    service: ModelService, telemetry: TelemetryCollector
) -> None:
    error = RequestError("body", "bad")
    service.rejected("/predict", error, started=0.0)
    model = _loaded(service).require_model()
    service.rejected("/invocations", error, started=0.0)
    assert [(f["route"], f["error"], f["served"]) for f in telemetry.failures] == [
        ("/predict", error, None),
        ("/invocations", error, model),
    ]


# --- following an alias ----------------------------------------------------------------------


class AliasRegistry:
    """What the registry's alias points at, moved by the test; it can also be unreachable."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.down = False
        self.asked = 0

    def __call__(self, name: str, alias: str) -> str:
        self.asked += 1
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.version


async def _until(condition: Any, polls: int = 500) -> None:
    """Let the event loop run until `condition()` holds (a bound on polls, not on time)."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_a_replica_follows_the_alias_and_swaps_in_place(
    tmp_path: Path, registry: Registry, telemetry: TelemetryCollector
) -> None:
    alias = AliasRegistry("1")
    settings = Settings(var_dir=tmp_path / "var")
    service = ModelService(settings, registry, telemetry, resolver=alias)

    async def scenario() -> None:
        await service.apply(
            _options("1").model_copy(
                update={"model_uri": "models:/demo@champion", "alias_poll_s": 0.01}
            )
        )
        assert service.version().body["model_version"] == "1"
        alias.version = "2"  # a promotion moved the alias
        await _until(lambda: service.version().body["model_version"] == "2")
        alias.down = True  # the registry goes away: the replica keeps serving version 2
        asked = alias.asked
        await _until(lambda: alias.asked > asked + 2)
        health = service.health({}).body
        assert health["following"]["last_poll"]["status"] == "failed"
        assert service.version().body["model_version"] == "2"
        alias.down, alias.version = False, "1"  # a rollback travels the same way
        await _until(lambda: service.version().body["model_version"] == "1")
        await service.apply(_options("2"))  # pinned again: following stops
        alias.version = "1"
        asked = alias.asked
        await asyncio.sleep(0.1)
        assert alias.asked == asked and service.version().body["model_version"] == "2"

    asyncio.run(scenario())
    gc.unfreeze()
    assert registry.calls == [("demo", "1"), ("demo", "2"), ("demo", "1"), ("demo", "2")]


def test_a_followed_version_that_fails_to_load_keeps_the_old_model(
    tmp_path: Path, registry: Registry, telemetry: TelemetryCollector
) -> None:
    alias = AliasRegistry("1")
    service = ModelService(Settings(var_dir=tmp_path / "var"), registry, telemetry, resolver=alias)

    async def scenario() -> None:
        await service.apply(ServingOptions(model_uri="models:/demo@champion", alias_poll_s=0.01))
        alias.version = "9"  # no such version in the registry
        await _until(lambda: service.last_load["status"] == "failed")
        assert service.version().body["model_version"] == "1"
        assert service.last_load["model_uri"] == "models:/demo/9"

    asyncio.run(scenario())
    gc.unfreeze()
