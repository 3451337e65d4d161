"""Live quality over sliding windows (ml.ct.quality_windows) and its `mlops.quality` documents:
scores only with enough labels, the champion's version and holdout score beside them. A real
local MLflow store with a registered demo champion, a real SQLite predictions/outcomes store."""

# pytest fixtures arrive as arguments of the same name; test names say what they check
# pylint: disable=missing-function-docstring,redefined-outer-name
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from elk import events
from ml import ct
from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.outcomes import OutcomeStore, PredictionRecord
from tests.unit.registry_support import demo_split, register_champion

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry whose champion is a logistic regression on the demo data."""
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("quality") / "var", model_name="quality-model"
    )
    demo = demo_split()
    version, model = register_champion(settings, demo)
    holdout = demo[1]
    return {
        "settings": settings,
        "version": version,
        "model": model,
        "X": holdout.X_holdout.assign(truth=holdout.y_holdout.to_numpy()),
    }


@pytest.fixture
def settings(champion: dict[str, Any], tmp_path: Path) -> Settings:
    """The champion's registry, a fresh store per test; 50 labels make a score (250 rows)."""
    configure_tracking(champion["settings"])
    return champion["settings"].model_copy(
        update={
            "ct_database": f"sqlite:///{tmp_path / 'ct.db'}",
            "log_dir": tmp_path / "log",
            "ct_min_labels": 50,
            "ct_quality_window_h": 24.0,
        }
    )


def serve(
    settings: Settings, champion: dict[str, Any], X: pd.DataFrame, days_ago: float, version: str
) -> None:
    """Record what serving would (label, class probabilities), served `days_ago`, and each
    row's true label (`X.truth`) as its outcome."""
    model, store = champion["model"], OutcomeStore(settings.ct_database)
    classes = list(model.classes_)
    features = X.drop(columns=["truth"])
    proba = model.predict_proba(features)
    ids = [f"{version}-{days_ago}-{i}" for i in range(len(X))]
    store.record_predictions(
        PredictionRecord(
            pid,
            settings.model_name,
            version,
            row,
            classes[p_row.argmax()],
            dict(zip(map(str, classes), p_row)),
            NOW - timedelta(days=days_ago),
        )
        for pid, row, p_row in zip(ids, features.to_dict("records"), proba)
    )
    store.record_feedback(list(zip(ids, X["truth"].tolist())))


def test_a_window_with_enough_labels_has_the_scores_of_its_rows(settings, champion) -> None:
    serve(settings, champion, champion["X"], days_ago=0.1, version=champion["version"])
    report = ct.check(settings)
    rows, hours = report.quality
    assert (rows.kind, rows.size, hours.kind, hours.size) == ("rows", 250, "hours", 24.0)
    expected = ct.live_quality(
        OutcomeStore(settings.ct_database).labelled(settings.model_name, 250)
    )
    expected.pop("labelled")
    for window in (rows, hours):
        assert window.labelled == len(champion["X"])
        assert window.scores == expected and set(expected) == {"accuracy", "f1", "roc_auc"}


def test_too_few_labels_give_a_count_and_no_score(settings, champion) -> None:
    X, version = champion["X"], champion["version"]
    serve(settings, champion, X.iloc[:80], days_ago=3, version=version)
    serve(settings, champion, X.iloc[80:], days_ago=0.1, version=version)
    rows, hours = ct.check(settings).quality
    assert rows.labelled == len(X) and rows.scores  # 3 days ago is in the newest 250 rows
    assert hours.labelled == len(X) - 80 < settings.ct_min_labels
    assert hours.scores == {}, "never a score from too few labels"


def test_the_windows_hold_the_champions_own_newest_predictions(settings, champion) -> None:
    """Beside the champion's holdout score, only its own predictions: those of the version
    it replaced would chart its predecessor's mistakes against it."""
    X = champion["X"]
    serve(settings, champion, X, days_ago=0.05, version="an-older-version")
    for days_ago in (2, 1, 0.1):
        serve(settings, champion, X, days_ago=days_ago, version=champion["version"])
    rows, hours = ct.check(settings).quality
    assert rows.labelled == 250  # of the champion's 3 x 114, the newest 250
    assert hours.labelled == len(X), "the last 24 h: the champion's 114, not the older version's"


def test_a_document_below_the_minimum_carries_no_scores() -> None:
    window = {"name": "last 24 h", "kind": "hours", "size": 24.0}
    scores = {"accuracy": 0.5, "f1": 0.5}
    holdout = {"accuracy": 0.9, "roc_auc": 0.95, "log_loss": 0.2}
    few = events.quality_event(
        model_name="m",
        model_version="3",
        window={**window, "labelled": 3, "min_labels": 50, "scores": scores},
        metric="roc_auc",
        holdout=holdout,
    )
    quality = few["mlops"]["quality"]
    assert quality["enough_labels"] is False and quality["labelled"] == 3
    assert not {"accuracy", "f1", "roc_auc"} & set(quality)
    assert quality["holdout_score"] == holdout["roc_auc"]
    assert quality["holdout"] == {"accuracy": 0.9, "roc_auc": 0.95}
    assert few["event"]["dataset"] == "mlops.quality"
    assert few["mlops"]["model"] == {"name": "m", "version": "3"}


def test_mlops_ct_check_writes_one_quality_document_per_window(settings, champion) -> None:
    from serving.main import app

    X, version = champion["X"], champion["version"]
    serve(settings, champion, X.iloc[:80], days_ago=3, version=version)
    serve(settings, champion, X.iloc[80:], days_ago=0.1, version=version)
    env = {
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_LOG_DIR": str(settings.log_dir),
        "MLOPS_CT_DATABASE": settings.ct_database,
        "MLOPS_MODEL_NAME": settings.model_name,
        "MLOPS_CT_MIN_LABELS": "50",
    }
    result = CliRunner().invoke(app, ["ct", "check"], env=env)
    assert result.exit_code == 0, result.output

    lines = (Path(settings.log_dir) / "mlops-mlops.quality.ndjson").read_text().splitlines()
    rows, hours = [json.loads(line) for line in lines]
    tags = MlflowClient().get_model_version(settings.model_name, version).tags
    for document in (rows, hours):
        assert document["mlops"]["model"] == {"name": settings.model_name, "version": version}
        quality = document["mlops"]["quality"]
        assert quality["metric"] == settings.promotion_metric
        assert quality["holdout_score"] == float(tags[f"holdout.{settings.promotion_metric}"])
    assert rows["mlops"]["quality"]["window"] == {
        "name": "last 250 labelled",
        "kind": "rows",
        "size": 250.0,
    }
    assert rows["mlops"]["quality"]["enough_labels"] and "roc_auc" in rows["mlops"]["quality"]
    assert hours["mlops"]["quality"]["labelled"] == len(X) - 80
    assert "accuracy" not in hours["mlops"]["quality"]
