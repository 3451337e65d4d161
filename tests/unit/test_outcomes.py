"""ml.outcomes: the predictions/outcomes store on a real SQLite file and, as integration tests,
on a real PostgreSQL database (`ct_database`, tests/fixtures/postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ml.outcomes import OutcomeStore, PredictionRecord


@pytest.fixture
def store(ct_database: str) -> OutcomeStore:
    return OutcomeStore(ct_database)


def record(pid: str, label: object = "yes", version: str = "1", **features: object):
    return PredictionRecord(
        prediction_id=pid,
        model_name="m",
        model_version=version,
        features=features or {"x": 1.0, "plan": "gold"},
        label=label,
        probabilities={"no": 0.2, "yes": 0.8},
    )


def test_feedback_joins_predictions_and_keeps_label_types(store: OutcomeStore) -> None:
    store.record_predictions([record("a", x=np.float64(1.5), plan="gold"), record("b", label=1)])
    results = store.record_feedback([("a", "no"), ("b", True)])
    assert [result.stored for result in results] == [True, True]
    rows = store.labelled("m", limit=10)
    assert len(rows) == 2
    assert rows.predicted == ["yes", 1] and rows.truth == ["no", True]
    assert rows.features.loc[0, "x"] == 1.5 and rows.features.loc[0, "plan"] == "gold"
    matrix = rows.probability_matrix(["no", "yes"])
    assert matrix is not None and matrix.tolist() == [[0.2, 0.8], [0.2, 0.8]]


def test_unknown_ids_fail_per_item_and_a_repeat_replaces(store: OutcomeStore) -> None:
    store.record_predictions([record("a")])
    results = store.record_feedback([("a", "yes"), ("never-issued", "no"), ("a", "no")])
    assert [(r.prediction_id, r.stored) for r in results] == [
        ("a", True),
        ("never-issued", False),
        ("a", True),
    ]
    assert "unknown prediction_id" in (results[1].error or "")
    store.record_feedback([("a", "yes")])
    rows = store.labelled("m", limit=10)
    assert rows.truth == ["yes"], "a repeated outcome must replace, not double"


def test_an_id_with_a_nul_character_is_unknown_not_an_error(store: OutcomeStore) -> None:
    """Any JSON string reaches the store from POST /feedback; PostgreSQL refuses NUL in text,
    which failed the whole batch there (SQLite took it)."""
    store.record_predictions([record("a")])
    results = store.record_feedback([("a\x00", "no"), ("a", "yes")])
    assert [(r.prediction_id, r.stored) for r in results] == [("a\x00", False), ("a", True)]


def test_a_repeated_prediction_id_is_kept_once(store: OutcomeStore) -> None:
    assert store.record_predictions([record("a"), record("b")]) == 2
    store.record_predictions([record("a", label="no")])
    store.record_feedback([("a", "yes"), ("b", "yes")])
    rows = store.labelled("m", limit=10)
    assert len(rows) == 2 and rows.predicted.count("yes") == 2


def test_windows_take_the_most_recent_rows_of_one_model(store: OutcomeStore) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    store.record_predictions(
        PredictionRecord(f"p{i}", "m", "1", {"x": float(i)}, "yes", None, start + timedelta(i))
        for i in range(10)
    )
    store.record_predictions([PredictionRecord("other", "n", "1", {"x": 99.0}, "yes")])
    store.record_feedback([(f"p{i}", "no") for i in range(10)])
    assert store.recent_inputs("m", limit=3)["x"].tolist() == [7.0, 8.0, 9.0]
    rows = store.labelled("m", limit=4)
    assert rows.features["x"].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert rows.probability_matrix(["no", "yes"]) is None  # served without probabilities


def test_rows_served_at_the_same_instant_come_in_serving_order(store: OutcomeStore) -> None:
    """Serving stamps every row of a request with one time (milliseconds), so windows cut
    through ties: PostgreSQL returned an arbitrary subset in arbitrary order, SQLite the
    insertion order. Ties go by prediction id (serving issues them increasing per process)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    order = [3, 0, 5, 1, 4, 2]  # stored out of id order: only the tie-break can sort them
    store.record_predictions(
        PredictionRecord(f"p{i}", "m", "1", {"x": float(i)}, "yes", None, at) for i in order
    )
    store.record_feedback([(f"p{i}", "no") for i in order])
    assert store.recent_inputs("m", limit=3)["x"].tolist() == [3.0, 4.0, 5.0]
    assert store.labelled("m", limit=4).prediction_ids == ["p2", "p3", "p4", "p5"]


def test_prune_drops_old_predictions_and_their_outcomes(store: OutcomeStore) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    store.record_predictions([PredictionRecord("old", "m", "1", {"x": 1.0}, "yes", None, old)])
    store.record_predictions([record("new")])
    store.record_feedback([("old", "no"), ("new", "no")])
    assert store.prune(timedelta(days=30)) == 1
    assert store.labelled("m", limit=10).features.shape[0] == 1
    assert not store.record_feedback([("old", "yes")])[0].stored


def test_a_sqlite_store_runs_in_wal(tmp_path: Path) -> None:
    """Replicas write while a CT run reads: WAL lets them overlap (ml.common.sqlite)."""
    store = OutcomeStore(f"sqlite:///{tmp_path / 'ct.db'}")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
