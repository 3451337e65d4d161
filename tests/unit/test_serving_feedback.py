"""Ground truth through serving: predictions recorded off the request path by the telemetry
thread, `POST /feedback`'s token, rate limit and per-item results, and its body parsing.

Real pieces throughout: a real SQLite outcome store, the real telemetry thread with an NDJSON
sink, a model fitted on the demo data; no Ray.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ml.config import Settings
from ml.outcomes import OutcomeStore
from serving.protocol import feedback_items
from serving.schemas import RequestError
from serving.service import ModelService, TokenBucket
from serving.telemetry import PredictionTelemetry
from tests.unit.serving_support import Registry, TelemetryCollector, demo_model, demo_rows

FEEDBACK_TOKEN = "feedback-token"  # noqa: S105 - test values
ADMIN_TOKEN = "admin-token"  # noqa: S105


@pytest.fixture
def store(tmp_path: Path) -> OutcomeStore:
    return OutcomeStore(f"sqlite:///{tmp_path / 'ct.db'}")


def _service(tmp_path: Path, store: OutcomeStore | None, rate: float = 100.0, **tokens: str):
    settings = Settings(
        var_dir=tmp_path / "var",
        feedback_rate_per_s=rate,
        **{name: SecretStr(value) for name, value in tokens.items()},
    )
    clock = FakeClock()
    service = ModelService(
        settings,
        Registry({("demo", "1"): demo_model("1")}),
        TelemetryCollector(),
        store,
        clock=clock,
    )
    return service, clock


class FakeClock:
    """Time the test moves by hand, so the rate limit is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _feedback(service: ModelService, body: object, token: str | None = FEEDBACK_TOKEN):
    header = None if token is None else f"Bearer {token}"
    return asyncio.run(service.feedback(header, json.dumps(body).encode()))


def _recorded_store(tmp_path: Path, store: OutcomeStore, rows: int = 3) -> list[str]:
    """Serve `rows` demo rows through the real telemetry thread into the store; their ids."""
    model = demo_model("1")
    telemetry = PredictionTelemetry(Settings(var_dir=tmp_path / "var"), "test", store)
    frame = demo_rows(rows)
    proba = model.predict_proba(frame)
    ids = [f"id-{i}" for i in range(rows)]
    labels = [model.classes[i] for i in proba.argmax(axis=1)]
    records = json.loads(frame.to_json(orient="records"))
    telemetry.predictions(model, ids, labels, proba, 1.0, "/predict", (records, list(frame)))
    telemetry.close()
    assert telemetry.recorded == rows
    return ids


def test_served_predictions_are_recorded_with_every_class_probability(
    tmp_path: Path, store: OutcomeStore
) -> None:
    ids = _recorded_store(tmp_path, store)
    store.record_feedback([(ids[0], "benign")])
    rows = store.labelled("demo", limit=10)
    assert len(rows) == 1 and rows.truth == ["benign"]
    probabilities = rows.probabilities[0]
    assert probabilities is not None and set(probabilities) == {"benign", "malignant"}
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert rows.features.shape[1] == 30  # every demo feature, by name


def test_feedback_stores_per_item_and_refuses_unknown_ids(
    tmp_path: Path, store: OutcomeStore
) -> None:
    ids = _recorded_store(tmp_path, store)
    service, _ = _service(tmp_path, store, feedback_token=FEEDBACK_TOKEN)
    answer = _feedback(
        service,
        [
            {"prediction_id": ids[0], "label": "malignant"},
            {"prediction_id": "never-issued", "label": "benign"},
        ],
    )
    assert answer.status == 200
    assert (answer.body["stored"], answer.body["rejected"]) == (1, 1)
    assert answer.body["results"][1]["error"].startswith("unknown prediction_id")
    again = _feedback(service, {"prediction_id": ids[0], "label": "benign"})
    assert again.body["stored"] == 1
    assert store.labelled("demo", limit=10).truth == ["benign"], "a repeat replaces"


def test_feedback_needs_a_token_and_takes_the_admin_one_too(
    tmp_path: Path, store: OutcomeStore
) -> None:
    body = {"prediction_id": "x", "label": 1}
    disabled, _ = _service(tmp_path, store)
    assert _feedback(disabled, body).status == 403
    service, _ = _service(tmp_path, store, feedback_token=FEEDBACK_TOKEN, admin_token=ADMIN_TOKEN)
    missing = _feedback(service, body, token=None)
    assert missing.status == 401 and missing.headers == {"WWW-Authenticate": "Bearer"}
    assert _feedback(service, body, token="guess").status == 403
    assert _feedback(service, body, token=ADMIN_TOKEN).status == 200
    assert _feedback(service, body, token=FEEDBACK_TOKEN).status == 200


def test_feedback_is_rate_limited_per_replica(tmp_path: Path, store: OutcomeStore) -> None:
    service, clock = _service(tmp_path, store, rate=10.0, feedback_token=FEEDBACK_TOKEN)
    batch = [{"prediction_id": f"p{i}", "label": 0} for i in range(60)]
    assert _feedback(service, batch).status == 200  # 60 of the 100 a burst allows
    limited = _feedback(service, batch)
    assert limited.status == 429 and limited.headers == {"Retry-After": "2"}
    clock.now += 2.0  # 20 more saved up: 60 again
    assert _feedback(service, batch).status == 200


def test_feedback_without_a_store_is_503(tmp_path: Path) -> None:
    service, _ = _service(tmp_path, None, feedback_token=FEEDBACK_TOKEN)
    assert _feedback(service, {"prediction_id": "x", "label": 1}).status == 503


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([], "body", 422),
        ({"prediction_id": "", "label": 1}, "items[0].prediction_id", 422),
        ([{"prediction_id": "a", "label": 1}, {"prediction_id": "b"}], "items[1].label", 422),
        ({"prediction_id": "a", "label": [1]}, "items[0].label", 422),
        ({"prediction_id": "a", "label": 1, "extra": 2}, "items[0].extra", 422),
        (["a"], "items[0]", 422),
        ([{"prediction_id": "a", "label": 1}] * 11, "body", 413),
    ],
)
def test_bad_feedback_names_the_item_and_field(body: object, field: str, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        feedback_items(json.dumps(body).encode(), max_items=10)
    assert (caught.value.field, caught.value.status) == (field, status)


def test_the_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=5.0, burst=10.0, clock=lambda: now[0])
    assert bucket.take(10) == 0.0
    assert bucket.take(1) == pytest.approx(0.2)
    now[0] += 1.0
    assert bucket.take(5) == 0.0 and bucket.take(1) > 0


@pytest.mark.timeout(60)
def test_recording_never_blocks_the_caller_while_the_store_writes(
    tmp_path: Path, store: OutcomeStore
) -> None:
    """The handler's part is a queue put: all hand-overs return while the store is held in the
    middle of a write (were they waiting for it, this test would hang until its timeout)."""
    writing, release = threading.Event(), threading.Event()

    class HeldStore:
        def record_predictions(self, records: list) -> int:
            writing.set()
            release.wait()
            return store.record_predictions(records)

    model = demo_model("1")
    held: Any = HeldStore()  # stands in for the store's one method the thread calls
    telemetry = PredictionTelemetry(Settings(var_dir=tmp_path / "var"), "test", held)
    frame = demo_rows(2)
    proba = model.predict_proba(frame)
    records = json.loads(frame.to_json(orient="records"))
    for index in range(20):
        telemetry.predictions(
            model,
            [f"a{index}", f"b{index}"],
            ["benign"] * 2,
            proba,
            1.0,
            "/predict",
            (records, list(frame)),
        )
        if index == 0:
            assert writing.wait(30), "the telemetry thread never started writing"
    assert not release.is_set()  # every hand-over returned while the write was held
    release.set()
    telemetry.close(timeout_s=30)
    assert telemetry.recorded == 40


def test_each_reported_outcome_is_an_ecs_feedback_event(
    tmp_path: Path, store: OutcomeStore
) -> None:
    """`mlops.feedback` events, written by the telemetry thread where Filebeat reads them."""
    ids = _recorded_store(tmp_path, store)
    settings = Settings(
        var_dir=tmp_path / "var", model_name="demo", feedback_token=SecretStr(FEEDBACK_TOKEN)
    )
    telemetry = PredictionTelemetry(settings, "test", store)
    service = ModelService(settings, Registry({}), telemetry, store)
    body = [
        {"prediction_id": ids[0], "label": "malignant"},
        {"prediction_id": "never-issued", "label": "benign"},
    ]
    assert _feedback(service, body).status == 200
    telemetry.close()
    path = Path(settings.log_dir) / "mlops-mlops.feedback.ndjson"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [event["mlops"]["feedback"] for event in events] == [
        {"prediction_id": ids[0], "label": "malignant", "stored": True},
        {"prediction_id": "never-issued", "label": "benign", "stored": False},
    ]
    assert [event["event"]["outcome"] for event in events] == ["success", "failure"]
    assert events[1]["error"]["message"].startswith("unknown prediction_id")
    assert {event["mlops"]["model"]["name"] for event in events} == {"demo"}
