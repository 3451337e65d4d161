"""ml.ct: each retrain trigger fires on its evidence, stays quiet without it, and says when
the evidence is too little. A real local MLflow store with a registered demo champion and a
real SQLite store of predictions and outcomes; no server."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ml import ct
from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.data import Dataset, Split, load_dataset
from ml.outcomes import OutcomeStore, PredictionRecord
from tests.unit.registry_support import demo_split, register_champion


@pytest.fixture(scope="module")
def demo() -> tuple[Dataset, Split]:
    return demo_split()


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory: pytest.TempPathFactory, demo) -> tuple[Settings, object]:
    """A registry whose champion is a logistic regression on the demo data."""
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("ct") / "var",
        model_name="ct-model",
        ct_min_labels=50,
        ct_min_drift_rows=50,
    )
    _, model = register_champion(settings, demo)
    return settings, model


@pytest.fixture
def settings(champion_store, tmp_path: Path) -> Settings:
    """The champion's registry, with a fresh predictions/outcomes store per test."""
    base, _ = champion_store
    configure_tracking(base)
    return base.model_copy(update={"ct_database": f"sqlite:///{tmp_path / 'ct.db'}"})


def _serve(
    settings: Settings, model, X: pd.DataFrame, truth: list | None = None, version: str = "1"
) -> None:
    """Record what serving would: features, label, probabilities; then outcomes, if any."""
    store = OutcomeStore(settings.ct_database)
    proba = model.predict_proba(X)
    labels = model.classes_[proba.argmax(axis=1)]
    store.record_predictions(
        PredictionRecord(
            f"p{version}-{i}",
            settings.model_name,
            version,
            row,
            label,
            dict(zip(map(str, model.classes_), p_row)),
        )
        for i, (row, label, p_row) in enumerate(zip(X.to_dict("records"), labels, proba))
    )
    if truth is not None:
        store.record_feedback([(f"p{version}-{i}", label) for i, label in enumerate(truth)])


def _result(report: ct.CtReport, trigger: str) -> ct.TriggerResult:
    return next(result for result in report.results if result.trigger == trigger)


def test_without_a_champion_nothing_fires_and_it_says_why(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", model_name="nobody")
    configure_tracking(settings)
    report = ct.check(settings)
    assert report.champion is None and not report.fired
    assert all(
        not result.enough_evidence and "no champion" in result.reason for result in report.results
    )


def test_new_data_fires_only_when_the_source_changed(settings: Settings, tmp_path: Path) -> None:
    same = ct.check(settings)
    assert not _result(same, "new_data").fired and _result(same, "new_data").enough_evidence
    frame = load_dataset("demo", None)
    changed = pd.concat([frame.X, frame.y.rename("target")], axis=1)
    changed.loc[0, "mean radius"] += 1.0
    path = tmp_path / "changed.csv"
    changed.to_csv(path, index=False)
    elsewhere = settings.model_copy(update={"data": str(path), "target": "target"})
    result = _result(ct.check(elsewhere), "new_data")
    assert result.fired
    assert result.evidence["source_fingerprint"] != result.evidence["champion_fingerprint"]


def test_schedule_fires_on_an_old_champion(settings: Settings) -> None:
    champion = ct.load_champion(MlflowClient(), settings.model_name)
    assert champion is not None
    later = champion.created_at + timedelta(hours=10)
    assert not ct.schedule(settings, champion, later).fired
    old = ct.schedule(settings.model_copy(update={"ct_max_age_h": 5.0}), champion, later)
    assert old.fired and old.evidence["champion_age_h"] == pytest.approx(10.0)


def test_drift_needs_enough_rows_and_fires_on_a_shift(
    settings: Settings, champion_store, demo
) -> None:
    _, model = champion_store
    holdout = demo[1].X_holdout
    _serve(settings, model, holdout.head(20))
    few = _result(ct.check(settings), "drift")
    assert not few.fired and not few.enough_evidence and few.evidence["rows"] == 20

    fresh = settings.model_copy(update={"ct_database": settings.ct_database + "-2"})
    _serve(fresh, model, holdout)
    quiet = _result(ct.check(fresh), "drift")
    assert quiet.enough_evidence and not quiet.fired, quiet.reason

    shifted = holdout.copy()
    shifted["mean radius"] = shifted["mean radius"] * 1.6
    moved = settings.model_copy(update={"ct_database": settings.ct_database + "-3"})
    _serve(moved, model, shifted)
    result = _result(ct.check(moved), "drift")
    assert result.fired and "mean radius" in result.evidence["drifted"]


def test_performance_fires_when_the_outcomes_say_the_model_is_wrong(
    settings: Settings, champion_store, demo
) -> None:
    _, model = champion_store
    X, y = demo[1].X_holdout, list(demo[1].y_holdout)
    _serve(settings, model, X.head(10), y[:10])
    few = _result(ct.check(settings), "performance")
    assert not few.fired and not few.enough_evidence

    healthy = settings.model_copy(update={"ct_database": settings.ct_database + "-ok"})
    _serve(healthy, model, X, y)
    kept = _result(ct.check(healthy), "performance")
    assert kept.enough_evidence and not kept.fired, kept.reason
    assert kept.evidence["live"]["roc_auc"] > 0.9

    classes = list(model.classes_)
    flipped = [classes[1 - classes.index(label)] for label in y]  # the relation reversed
    wrong = settings.model_copy(update={"ct_database": settings.ct_database + "-wrong"})
    _serve(wrong, model, X, flipped)
    dropped = _result(ct.check(wrong), "performance")
    assert dropped.fired, dropped.reason
    assert dropped.evidence["live"]["roc_auc"] < 0.2
    assert dropped.evidence["holdout"] > 0.9


def test_performance_counts_only_the_champions_own_predictions(
    settings: Settings, champion_store, demo
) -> None:
    """The mistakes of the version the champion replaced must not retrain the champion."""
    _, model = champion_store
    X, y = demo[1].X_holdout, list(demo[1].y_holdout)
    classes = list(model.classes_)
    flipped = [classes[1 - classes.index(label)] for label in y]
    _serve(settings, model, X, flipped, version="0")  # the previous champion, wrong
    result = _result(ct.check(settings), "performance")
    assert not result.fired and result.evidence["labelled"] == 0, result.reason

    _serve(settings, model, X, flipped, version="1")  # the champion itself, as wrong
    assert _result(ct.check(settings), "performance").fired


def test_live_quality_matches_scikit_learn(champion_store, demo, settings: Settings) -> None:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    _, model = champion_store
    X, y = demo[1].X_holdout, list(demo[1].y_holdout)
    _serve(settings, model, X, y)
    quality = ct.live_quality(OutcomeStore(settings.ct_database).labelled(settings.model_name, 500))
    predicted = model.predict(X)
    positive = model.classes_[1]
    assert quality["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert quality["f1"] == pytest.approx(f1_score(y, predicted, pos_label=positive))
    truth = np.asarray(y) == positive
    assert quality["roc_auc"] == pytest.approx(roc_auc_score(truth, model.predict_proba(X)[:, 1]))
    assert quality["labelled"] == len(y)


def test_mlops_ct_check_prints_json_exits_0_and_records_events(settings: Settings) -> None:
    from serving.main import app

    env = {
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_MODEL_NAME": settings.model_name,
        "MLOPS_CT_DATABASE": settings.ct_database,
        "MLOPS_CT_MAX_AGE_H": "0.000001",
    }
    result = CliRunner().invoke(app, ["ct", "check", "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["fired"] == ["schedule"]
    assert {item["trigger"] for item in body["results"]} == set(ct.TRIGGERS)
    lines = (Path(settings.log_dir) / "mlops-mlops.ct.ndjson").read_text().splitlines()
    recorded = [json.loads(line)["mlops"]["ct"] for line in lines[-4:]]
    assert [item["trigger"] for item in recorded] == list(ct.TRIGGERS)
    assert [item["fired"] for item in recorded] == [False, True, False, False]


def test_live_f1_takes_the_models_positive_class_for_integer_labels() -> None:
    """Labels 2 and 10, model order [2, 10] (the probabilities' keys): F1 is about class 10,
    as the holdout's was; sorting the labels as text made it about class 2."""
    from sklearn.metrics import f1_score, roc_auc_score

    from ml.outcomes import LabelledRows

    truth = [10, 10, 10, 2, 2, 2, 2, 2]
    predicted = [10, 2, 2, 2, 2, 2, 2, 10]
    p10 = [0.9, 0.4, 0.3, 0.2, 0.1, 0.3, 0.2, 0.6]
    rows = LabelledRows(
        prediction_ids=[str(i) for i in range(8)],
        features=pd.DataFrame({"x": range(8)}),
        predicted=predicted,
        truth=truth,
        probabilities=[{"2": 1 - p, "10": p} for p in p10],
        model_versions=["1"] * 8,
    )
    quality = ct.live_quality(rows)
    assert quality["f1"] == pytest.approx(f1_score(truth, predicted, pos_label=10))
    assert quality["f1"] != pytest.approx(f1_score(truth, predicted, pos_label=2))
    assert quality["roc_auc"] == pytest.approx(roc_auc_score([t == 10 for t in truth], p10))
