"""ECS event builders: field names, fractions, timestamps, ids."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

from elk import events
from elk.stack import mapped_fields
from ml.common.values import plain


def _leaves(document: dict, prefix: str = "") -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(_leaves(value, path + "."))
        else:
            found[path] = value
    return found


def test_prediction_event_has_ecs_and_model_fields() -> None:
    event = events.prediction_event(
        model_name="m",
        model_version="3",
        prediction_id="p-1",
        label=1,
        probability=0.93,
        latency_ms=2.5,
        route="/predict",
        features={"a": 1.5, "b": "x"},
    )
    assert event["event"]["dataset"] == "mlops.prediction"
    assert event["host"]["name"]
    assert event["mlops"]["model"] == {"name": "m", "version": "3"}
    assert event["mlops"]["prediction"]["label"] == "1"  # one keyword type for every label
    assert event["mlops"]["prediction"]["features"] == {"a": 1.5, "b": "x"}
    assert event["event"]["duration"] == 2_500_000  # ECS duration is nanoseconds
    assert event["@timestamp"].endswith("Z")
    assert datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00")).tzinfo is not None
    json.dumps(event)  # serialisable as it is


def test_non_finite_features_are_null_in_the_event_as_plain_has_them() -> None:
    """The hot path inlines `plain` for Python floats: the same answer, None, for NaN and
    +-infinity (JSON has neither), and strict JSON out."""
    features = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 1e308, "n": 2}
    event = events.prediction_event(
        model_name="m",
        model_version="3",
        prediction_id="p-1",
        label=1,
        probability=0.93,
        latency_ms=2.5,
        route="/predict",
        features=features,
    )
    written = event["mlops"]["prediction"]["features"]
    assert written == {key: plain(value) for key, value in features.items()}
    assert written == {"nan": None, "inf": None, "-inf": None, "big": 1e308, "n": 2}
    json.dumps(event, allow_nan=False)  # strict JSON


def test_failed_prediction_records_the_error() -> None:
    event = events.prediction_event(
        model_name="m",
        model_version="1",
        prediction_id="",
        label=None,
        probability=0.0,
        latency_ms=1.0,
        route="/predict",
        status="failure",
        error="bad field x",
    )
    assert event["event"]["outcome"] == "failure"
    assert event["error"]["message"] == "bad field x"
    assert event["mlops"]["prediction"]["label"] is None


def test_every_event_gets_its_own_id_and_index() -> None:
    first = events.stage_event(stage="tune", status="success", duration_s=1.0)
    second = events.stage_event(stage="tune", status="success", duration_s=1.0)
    assert events.event_id(first) != events.event_id(second)
    assert events.index_for(events.dataset_of(first)) == "mlops-mlops.stage"


def test_percentages_are_fractions() -> None:
    memory = events.memory_event(total=1000, used=250, available=600, swap_used_pct=0.1)
    assert memory["system"]["memory"]["used"]["pct"] == pytest.approx(0.25)
    assert memory["system"]["memory"]["actual"]["used"]["pct"] == pytest.approx(0.4)
    container = events.container_event(
        container_id="c", name="n", image="i", cpu_pct=0.5, memory_usage=50, memory_limit=200
    )
    assert container["docker"]["memory"]["usage"]["pct"] == pytest.approx(0.25)


BUILT = [
    events.cpu_event(total_pct=0.5, user_pct=0.4, system_pct=0.1, cores=2),
    events.load_event(load1=1.0, load5=0.5, load15=0.2, cores=2),
    events.memory_event(total=10, used=5, available=4, swap_used_pct=0.0),
    events.filesystem_event(
        mount_point="/", device="/dev/x", fs_type="ext4", total=10, used=4, free=6
    ),
    events.network_event(
        interface="eth0",
        in_bytes=1,
        out_bytes=2,
        in_packets=3,
        out_packets=4,
        in_errors=0,
        out_errors=0,
    ),
    events.process_event(
        pid=1,
        name="ray",
        role="serving",
        cpu_pct=0.1,
        rss=10,
        memory_pct=0.01,
        cmdline="ray::ServeReplica",
    ),
    events.container_event(
        container_id="c", name="n", image="i", cpu_pct=0.5, memory_usage=1, memory_limit=2
    ),
    events.serve_metrics_event({"http_requests_total": 3.0}, application="a", deployment="d"),
    events.trial_event(
        study_name="s",
        trial_number=0,
        state="COMPLETE",
        value=0.9,
        params={"family": "logreg"},
        duration_s=1.0,
        metric="roc_auc",
        model_name="m",
    ),
    events.study_event(
        study_name="s",
        best_value=0.9,
        best_params={"C": 1},
        trials_complete=3,
        trials_pruned=1,
        metric="roc_auc",
        model_name="m",
        duration_s=9.0,
    ),
    events.promotion_event(
        model_name="m",
        challenger_version="2",
        champion_version="1",
        promoted=True,
        metric="roc_auc",
        challenger_score=0.9,
        champion_score=0.8,
        reason="better",
    ),
    events.stage_event(stage="gate", status="success", duration_s=0.5),
    events.drift_event(
        model_name="m",
        model_version="1",
        feature="f",
        feature_type="numeric",
        psi=0.3,
        ks_pvalue=0.001,
        window_start="2026-01-01T00:00:00Z",
        window_end="2026-01-01T01:00:00Z",
        window_size=100,
        threshold=0.2,
    ),
    events.prediction_event(
        model_name="m",
        model_version="1",
        prediction_id="p",
        label="a",
        probability=0.5,
        latency_ms=1.0,
        route="/predict",
    ),
    events.ct_event(
        model_name="m",
        model_version="1",
        trigger="performance",
        fired=True,
        enough_evidence=True,
        reason="live f1 dropped",
        evidence={"live": {"f1": 0.5, "labelled": 300}, "holdout": 0.9},
    ),
    events.feedback_event(
        model_name="m", prediction_id="p", label=1, stored=False, error="not recorded"
    ),
    events.quality_event(
        model_name="m",
        model_version="1",
        window={
            "name": "last 1000 labelled",
            "kind": "rows",
            "size": 1000,
            "labelled": 300,
            "min_labels": 200,
            "scores": {"accuracy": 0.9, "f1": 0.8, "roc_auc": 0.95},
        },
        metric="roc_auc",
        holdout={"accuracy": 0.93, "f1": 0.9, "roc_auc": 0.97},
    ),
    events.model_load_event(
        model_name="m", model_version="2", status="failure", duration_s=0.4, error="no model.pkl"
    ),
    events.serving_health_event(model_name="m", dropped_total=3, queued=10),
]


@pytest.mark.parametrize("event", BUILT, ids=lambda event: event["event"]["dataset"])
def test_every_field_a_builder_writes_is_mapped(event: dict) -> None:
    """No builder relies on dynamic mapping for a typed field (params/labels are keywords)."""
    mapped = mapped_fields()
    dynamic_prefixes = (
        "labels.",
        "mlops.trial.params.",
        "mlops.study.best_params.",
        "mlops.serve.",
    )
    for name in _leaves(event):
        if name.startswith(dynamic_prefixes):
            continue
        assert name in mapped, f"{event['event']['dataset']}: {name} has no explicit mapping"


def test_all_datasets_are_covered_by_the_builders() -> None:
    assert {event["event"]["dataset"] for event in BUILT} == set(events.ALL_DATASETS)


def test_model_load_event_says_what_happened_and_refuses_an_unknown_status() -> None:
    failed = events.model_load_event(
        model_name="m", model_version="2", status="failure", duration_s=0.5, error="boom"
    )
    assert failed["event"]["outcome"] == "failure"
    assert failed["event"]["duration"] == 500_000_000
    assert failed["error"] == {"message": "boom"}
    with pytest.raises(ValueError, match="status must be success or failure, not 'loaded'"):
        events.model_load_event(model_name="m", model_version="2", status="loaded", duration_s=1)
