"""ml.model_card and `ModelService.overview` (what `/overview` and the `/ui` page show): the
feature hints from a real reference profile, the card and CT state read from a real local
MLflow registry and CT database (SQLite), and the service's answer over a version loaded by
the real `load_version`. No Ray."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.drift import OTHER, build_profile
from ml.evaluation import score
from ml.model_card import RegistryDescriber, ct_state, feature_hints, read_card
from ml.outcomes import PredictionRecord
from ml.predict import load_version
from ml.retrain import open_state, recent_runs, retrain
from serving.schemas import ServingOptions
from serving.service import ModelService
from tests.unit.registry_support import demo_split, register_champion, retrain_settings
from tests.unit.serving_support import TelemetryCollector, mixed_dataset


def test_hints_give_the_training_range_and_the_categories_seen() -> None:
    dataset = mixed_dataset(with_boolean=True)
    hints = {hint.name: hint for hint in feature_hints(dataset.feature_types, _profile(dataset))}
    assert list(hints) == list(dataset.feature_types), "in the model's feature order"
    for name in ("age", "spend"):
        values = dataset.X[name].dropna()
        assert (hints[name].minimum, hints[name].maximum) == (values.min(), values.max())
        assert hints[name].categories == []
    seen = dataset.X["plan"].dropna().astype(str).value_counts().index.tolist()
    assert hints["plan"].categories == seen, "most frequent first, missing left out"
    assert hints["plan"].type == "categorical"
    assert hints["member"].type == "boolean"
    assert sorted(hints["member"].categories) == sorted(dataset.X["member"].astype(str).unique())


def test_a_feature_the_profile_lacks_gets_its_type_only() -> None:
    hints = feature_hints({"a": "numeric", "b": "categorical"}, None)
    assert [(h.name, h.type, h.minimum, h.categories) for h in hints] == [
        ("a", "numeric", None, []),
        ("b", "categorical", None, []),
    ]


def test_rare_categories_folded_by_the_profile_are_not_offered() -> None:
    profile = {"features": {"c": {"type": "categorical", "proportions": {"x": 0.9, OTHER: 0.1}}}}
    assert feature_hints({"c": "categorical"}, profile)[0].categories == ["x"]


def _profile(dataset) -> dict:
    # through JSON, as training logs it and the card reads it
    return json.loads(json.dumps(build_profile(dataset.X, dataset.feature_types)))


# --- against a registry ------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str, object]:
    """A demo champion in a local registry: (settings, its version, (the split, the model))."""
    settings = retrain_settings(tmp_path_factory.mktemp("card"), "card-model")
    demo = demo_split()
    version, model = register_champion(settings, demo)
    return settings, version, (demo[1], model)


@pytest.fixture
def registered(champion: tuple[Settings, str, object]) -> Iterator[tuple[Settings, str, object]]:
    """The champion, with MLflow pointed at its registry (conftest resets it after each test)."""
    configure_tracking(champion[0])
    yield champion


def test_the_card_has_the_gate_decision_holdout_scores_and_training_ranges(registered) -> None:
    settings, version, (holdout_split, model) = registered
    loaded = load_version(settings.model_name, version)
    card = read_card(settings.model_name, version, loaded.feature_types)
    assert card.errors == []
    assert card.promotion["decision"] == "promoted"
    assert card.promotion["reason"] == "no champion yet"
    expected = score("roc_auc", model, holdout_split.X_holdout, holdout_split.y_holdout)
    assert card.holdout["roc_auc"] == pytest.approx(expected, abs=1e-6)  # tags keep 6 places
    first = card.features[0]
    train = holdout_split.X_train[first.name]
    assert (first.minimum, first.maximum) == (train.min(), train.max())


def test_a_version_the_registry_lacks_is_named_and_the_types_still_given(registered) -> None:
    settings, _, _ = registered
    card = read_card(settings.model_name, "99", {"x": "numeric"})
    assert len(card.errors) == 1 and card.errors[0].startswith("registry:")
    assert "99" in card.errors[0]
    assert [(hint.name, hint.minimum) for hint in card.features] == [("x", None)]
    assert (card.promotion, card.holdout) == ({}, {})


def test_ct_state_lists_the_newest_runs_and_live_quality(registered) -> None:
    settings, version, _ = registered
    before = ct_state(settings, settings.model_name, version)
    assert retrain(settings).outcome == "no_trigger"
    after = ct_state(settings, settings.model_name, version)
    assert len(after["runs"]) == len(before["runs"]) + 1
    newest = after["runs"][0]
    assert (newest["outcome"], newest["detail"]) == ("no_trigger", "no trigger fired")
    assert newest["started_at"].endswith("+00:00")
    assert [window["labelled"] for window in after["quality"]] == [0, 0]
    assert all(window["scores"] == {} for window in after["quality"]), "too few labels: no score"
    assert recent_runs(settings, 1) == after["runs"][:1]


def test_live_quality_counts_the_versions_labelled_predictions(registered) -> None:
    settings, version, _ = registered
    store = open_state(settings)
    records = [
        PredictionRecord(
            prediction_id=f"card-{index}",
            model_name=settings.model_name,
            model_version=version,
            features={"f": index},
            label="benign",
            probabilities={"benign": 0.8, "malignant": 0.2},
        )
        for index in range(3)
    ]
    store.record_predictions(records)
    store.record_feedback([(record.prediction_id, "benign") for record in records])
    state = ct_state(settings, settings.model_name, version)
    assert [window["labelled"] for window in state["quality"]] == [3, 3]


def test_ct_state_names_a_ct_database_it_cannot_read(registered, tmp_path: Path) -> None:
    settings, version, _ = registered
    not_a_database = tmp_path / "ct.db"
    not_a_database.write_text("not SQLite")
    broken = settings.model_copy(update={"ct_database": f"sqlite:///{not_a_database}"})
    state = ct_state(broken, settings.model_name, version)
    assert state["runs"] == [] and state["runs_error"].startswith("CT database:")


# --- ModelService.overview ----------------------------------------------------------------


def test_the_overview_of_the_served_version(registered) -> None:
    settings, version, _ = registered
    service = ModelService(
        settings, load_version, TelemetryCollector(), describer=RegistryDescriber(settings)
    )
    try:
        asyncio.run(service.apply(ServingOptions(model_uri=f"models:/card-model/{version}")))
        answer = asyncio.run(service.overview())
    finally:
        gc.unfreeze()
    body = answer.body
    assert answer.status == 200
    assert (body["model_name"], body["model_version"]) == ("card-model", version)
    assert body["classes"] == ["benign", "malignant"] and body["target"] == "target"
    assert body["max_request_rows"] == 10_000
    assert body["promotion"]["decision"] == "promoted" and "roc_auc" in body["holdout"]
    names = [feature["name"] for feature in body["features"]]
    assert names == list(service.model.validator.columns)
    assert set(body["example"]) == set(names), "the form starts from the logged example"
    assert {"runs", "quality"} <= set(body["ct"])
    json.dumps(body)  # plain JSON all through
    assert MlflowClient().get_model_version("card-model", version).tags["gate.decision"] == (
        "promoted"
    )
