"""Retention of the predictions/outcomes store: old rows go, the labelled rows a retrain learns
from stay, and every CT run applies it. Real SQLite stores and a real (small) local registry."""

# pytest fixtures arrive as arguments of the same name; test names say what they check
# pylint: disable=missing-function-docstring,redefined-outer-name
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml.config import Settings
from ml.outcomes import OutcomeStore, PredictionRecord, prune_expired
from ml.retrain import retrain
from tests.unit.registry_support import demo_split, register_champion

NOW = datetime.now(UTC)


@pytest.fixture
def store(tmp_path: Path) -> OutcomeStore:
    return OutcomeStore(f"sqlite:///{tmp_path / 'ct.db'}")


def served(pid: str, days_ago: float, model: str = "m") -> PredictionRecord:
    return PredictionRecord(pid, model, "1", {"x": 1.0}, "yes", None, NOW - timedelta(days_ago))


def still_kept(store: OutcomeStore, *ids: str) -> list[bool]:
    """Whether the store still holds each id: feedback for one it no longer keeps fails."""
    return [result.stored for result in store.record_feedback([(pid, "no") for pid in ids])]


def test_old_unlabelled_rows_go_recent_ones_and_the_newest_labelled_stay(
    store: OutcomeStore,
) -> None:
    store.record_predictions(
        [
            served("old-unlabelled", 40),
            served("new-unlabelled", 1),
            served("old-labelled-1", 50),
            served("old-labelled-2", 45),
            served("old-labelled-3", 41),
            served("new-labelled", 2),
        ]
    )
    store.record_feedback([(pid, "no") for pid in ("old-labelled-1", "old-labelled-2")])
    store.record_feedback([("old-labelled-3", "no"), ("new-labelled", "no")])

    # keep the 3 newest labelled: new-labelled, old-labelled-3, old-labelled-2
    assert store.prune(timedelta(days=30), keep_labelled=3) == 2

    labelled = store.labelled("m", 1000).prediction_ids
    assert labelled == ["old-labelled-2", "old-labelled-3", "new-labelled"]
    assert still_kept(store, "new-unlabelled", "old-unlabelled") == [True, False]


def test_the_labelled_rows_kept_are_counted_per_model(store: OutcomeStore) -> None:
    store.record_predictions([served("a-old", 40, "a"), served("b-old", 40, "b")])
    store.record_predictions([served("b-new", 1, "b")])
    store.record_feedback([("a-old", "no"), ("b-old", "no"), ("b-new", "no")])

    # one labelled row kept per model: model a keeps its only one although b has a newer one
    assert store.prune(timedelta(days=30), keep_labelled=1) == 1
    assert store.labelled("a", 10).prediction_ids == ["a-old"]
    assert store.labelled("b", 10).prediction_ids == ["b-new"]


def test_without_a_labelled_quota_every_old_row_goes(store: OutcomeStore) -> None:
    store.record_predictions([served("old", 40), served("new", 1)])
    store.record_feedback([("old", "no"), ("new", "no")])
    assert store.prune(timedelta(days=30)) == 1
    assert store.labelled("m", 10).prediction_ids == ["new"]


def test_prune_expired_reads_the_retention_settings(store: OutcomeStore, tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", ct_retention_days=10, ct_max_feedback_rows=1)
    store.record_predictions([served("labelled-old", 20), served("labelled-older", 25)])
    store.record_predictions([served("unlabelled-9d", 9), served("unlabelled-11d", 11)])
    store.record_feedback([("labelled-old", "no"), ("labelled-older", "no")])

    assert prune_expired(store, settings) == 2  # unlabelled-11d and labelled-older
    assert store.labelled("m", 10).prediction_ids == ["labelled-old"]
    assert still_kept(store, "unlabelled-9d", "unlabelled-11d") == [True, False]


def test_every_ct_run_applies_the_retention(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        model_name="retention-model",
        families=["logreg"],
        trials=2,
        ct_retention_days=30,
    )
    register_champion(settings, demo_split())
    store = OutcomeStore(settings.ct_database)
    store.record_predictions(
        [served("expired", 31, settings.model_name), served("recent", 29, settings.model_name)]
    )

    assert retrain(settings).outcome == "no_trigger"  # a run that trains nothing prunes too

    assert still_kept(store, "expired", "recent") == [False, True]
