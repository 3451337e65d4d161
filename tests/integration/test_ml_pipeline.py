"""The training chain against a real `mlflow server` process (SQLite backend, temp dir)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml.predict import load_champion
from ml.registry import CHAMPION, promote
from tests.fixtures.trained_model import train_into
from tests.unit.test_data import mixed_frame

pytestmark = pytest.mark.integration


def test_first_run_logs_trials_and_promotes(registered_model, mlflow_server) -> None:
    client = MlflowClient(mlflow_server.uri)
    result = registered_model.result
    parent = client.get_run(result.run_id)
    assert parent.data.tags["data.fingerprint"] == result.report.fingerprint
    assert "best_family" in parent.data.params
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"validation_report.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/confusion_matrix.png",
        "plots/roc_curve.png",
    } <= plots
    children = client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == registered_model.settings.trials
    assert {run.data.tags["optuna.state"] for run in children} <= {"COMPLETE", "PRUNED"}
    assert all("duration_s" in run.data.metrics for run in children)
    champion = client.get_model_version_by_alias(registered_model.name, CHAMPION)
    assert champion.version == registered_model.version
    assert champion.tags["gate.decision"] == "promoted"


def test_second_run_registers_challenger_and_records_gate(mlflow_server, tmp_path: Path) -> None:
    first = train_into(mlflow_server, tmp_path / "a", model_name="gated")
    second = train_into(mlflow_server, tmp_path / "b", model_name="gated")
    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version("gated", second.version)
    assert int(second.version) == int(first.version) + 1
    assert client.get_model_version_by_alias("gated", "challenger").version == second.version
    assert version.tags["gate.decision"] in {"promoted", "rejected"}
    assert float(version.tags["gate.challenger_score"]) > 0.5
    assert float(version.tags["gate.champion_score"]) > 0.5
    champion = client.get_model_version_by_alias("gated", CHAMPION).version
    expected = second.version if second.result.decision.promoted else first.version
    assert champion == expected


def test_manual_promotion_overrides_the_gate(mlflow_server, tmp_path: Path) -> None:
    first = train_into(mlflow_server, tmp_path / "a", model_name="manual")
    second = train_into(mlflow_server, tmp_path / "b", model_name="manual")
    client = MlflowClient(mlflow_server.uri)
    promote(client, "manual", first.version, reason="rollback drill")
    assert client.get_model_version_by_alias("manual", CHAMPION).version == first.version
    assert client.get_model_version("manual", first.version).tags["gate.reason"] == "rollback drill"
    assert second.version != first.version


def test_champion_that_cannot_score_new_columns_yields(mlflow_server, tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    mixed_frame(300).to_csv(csv, index=False)
    train_into(mlflow_server, tmp_path / "a", model_name="schema-change")
    changed = train_into(
        mlflow_server, tmp_path / "b", model_name="schema-change", data=str(csv), target="churned"
    )
    assert changed.result.decision.promoted
    assert "cannot score" in changed.result.decision.reason


def test_mixed_csv_predictions_come_back_as_original_labels(mlflow_server, tmp_path) -> None:
    frame = mixed_frame(300)
    frame["churned"] = (
        frame["churned"].map({"TRUE": "yes", "FALSE": "no"}).where(frame.index % 3 != 0, "maybe")
    )  # a three-class string target
    csv = tmp_path / "churn.csv"
    frame.to_csv(csv, index=False)
    trained = train_into(
        mlflow_server,
        tmp_path / "v",
        model_name="churn",
        data=str(csv),
        target="churned",
        families=["logreg", "hist_gb"],
    )
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.uri)
    champion = load_champion("churn")
    predictions = champion.predict_frame(frame.drop(columns="churned").head(25))
    assert set(predictions["prediction"]) <= {"yes", "no", "maybe"}
    assert {"proba_maybe", "proba_no", "proba_yes"} <= set(predictions.columns)
    assert predictions.filter(like="proba_").sum(axis=1).round(6).eq(1).all()
    assert champion.version == trained.version
    assert champion.feature_types["member"] == "boolean"
    assert isinstance(champion.input_example, pd.DataFrame)
