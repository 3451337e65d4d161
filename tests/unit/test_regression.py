"""Regression through the chain (issue 23): the families, the per-task settings, the metrics and
their direction, the gate (rmse: lower wins; a classifier and a regressor are never compared),
and a served regressor's answers, fast path included. Real models and a real MLflow SQLite
store; no mocks."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import skops.io as sio
from mlflow.tracking import MlflowClient
from sklearn.base import is_regressor
from sklearn.compose import TransformedTargetRegressor
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from elk import events
from ml import ct
from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.data import DataError, Dataset, Split, load_dataset, split, validate
from ml.evaluation import direction, is_better, regression_metrics, score
from ml.families import REGRESSION_FAMILIES, family
from ml.features import build_pipeline, skops_trusted_types, with_coercion
from ml.labelled import evaluate_file
from ml.outcomes import OutcomeStore, PredictionRecord
from ml.pipeline import settings_for
from ml.predict import LoadedModel
from ml.registry import CHAMPION, run_gate
from ml.training import fit_best, log_and_register
from ml.tuning import suggest_params
from serving.model import ServedModel
from serving.protocol import invocations_body, predict_body
from serving.schemas import prediction_schema
from tests.fixtures.mixed_csv import PRICE, price_frame

RIDGE = {"family": "ridge", "alpha": 1.0}
NOW = datetime.now(UTC)


@cache
def prices() -> Dataset:
    return validate(price_frame(), PRICE, source="price.csv")


@cache
def price_split() -> Split:
    return split(prices(), 0.2, 42)


# --- families ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REGRESSION_FAMILIES))
def test_each_regression_family_builds_a_seeded_regressor_inside_its_space(name: str) -> None:
    entry = family(name)
    assert entry.task == "regression" and entry.cheap_defaults is not None
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    sampled = entry.search_space(trial)
    assert is_regressor(entry.build(sampled, 3))
    for key, value in entry.cheap_defaults.items():  # the queued defaults lie in the space
        assert trial.distributions[key]._contains(  # pylint: disable=protected-access
            trial.distributions[key].to_internal_repr(value)
        )


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("name", list(REGRESSION_FAMILIES))
def test_skops_trusted_types_are_exactly_what_a_registered_regressor_needs(
    name: str, log_target: bool
) -> None:
    params = {"family": name, **(family(name).cheap_defaults or {}), "log_target": log_target}
    params.update({key: 10 for key in ("n_estimators", "max_iter") if key in params})  # small
    data = prices()
    # One OpenMP thread: a team of two spins on a machine whose cores other tests use.
    with threadpool_limits(1, user_api="openmp"):
        fitted = build_pipeline(params, data.feature_types, seed=0).fit(data.X, data.y)
    model = with_coercion(fitted, data.feature_types)
    assert isinstance(model[-1], TransformedTargetRegressor) == log_target
    dumped = sio.dumps(model)
    assert sorted(sio.get_untrusted_types(data=dumped)) == sorted(skops_trusted_types(params))
    restored = sio.loads(dumped, trusted=skops_trusted_types(params))
    np.testing.assert_array_equal(restored.predict(data.X), model.predict(data.X))


def test_the_search_offers_a_log_target_only_when_asked() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert "log_target" not in suggest_params(study.ask(), ["ridge"])
    assert "log_target" in suggest_params(study.ask(), ["ridge"], log_target=True)


def test_a_log_target_answers_in_the_targets_own_units() -> None:
    data, halves = prices(), price_split()
    logged = fit_best({**RIDGE, "log_target": True}, data, halves, seed=0)
    predicted = logged.predict(halves.X_holdout)
    assert predicted.min() > 0.5 * halves.y_holdout.min()  # prices, not their logs
    # a multiplicative target: learning its log fits better than learning it as it is
    plain = fit_best(RIDGE, data, halves, seed=0)
    assert score("rmse", logged, halves.X_holdout, halves.y_holdout) < score(
        "rmse", plain, halves.X_holdout, halves.y_holdout
    )


# --- settings per task ------------------------------------------------------------------------


def test_a_regression_dataset_gets_the_regression_defaults(tmp_path: Path) -> None:
    settings = settings_for(Settings(var_dir=tmp_path), prices())
    assert settings.model_name == "mlops-regressor"
    assert settings.tuning_metric == settings.promotion_metric == "rmse"
    assert settings.families == list(REGRESSION_FAMILIES)
    assert settings.decision is None  # no threshold for a regressor
    assert settings.task == "regression"
    classification = settings_for(Settings(var_dir=tmp_path), load_dataset("demo", None))
    assert classification.model_name == "mlops-classifier"
    assert classification.tuning_metric == "roc_auc"


def test_what_the_user_set_is_kept_and_the_other_tasks_settings_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_MODEL_NAME", "house-prices")
    monkeypatch.setenv("MLOPS_TUNING_METRIC", "mae")
    settings = settings_for(Settings(var_dir=tmp_path), prices())
    assert (settings.model_name, settings.tuning_metric) == ("house-prices", "mae")
    assert settings.promotion_metric == "rmse"
    monkeypatch.setenv("MLOPS_TUNING_METRIC", "f1")
    with pytest.raises(ValueError, match="tuning_metric 'f1' is not a regression metric"):
        settings_for(Settings(var_dir=tmp_path), prices())
    monkeypatch.setenv("MLOPS_TUNING_METRIC", "rmse")
    monkeypatch.setenv("MLOPS_FAMILIES", "logreg")
    with pytest.raises(ValueError, match="logreg cannot fit a regression target"):
        settings_for(Settings(var_dir=tmp_path), prices())


def test_an_explicit_task_names_the_model_before_any_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MLOPS_TASK=regression mlops serve` serves mlops-regressor without naming it."""
    monkeypatch.setenv("MLOPS_TASK", "regression")
    assert Settings(var_dir=tmp_path).model_name == "mlops-regressor"


def test_mape_is_refused_on_a_target_that_reaches_zero(tmp_path: Path) -> None:
    frame = price_frame()
    frame.loc[:4, PRICE] = 0.0
    with_zeros = validate(frame, PRICE, source="price.csv")
    with pytest.raises(ValueError, match="0 on some rows, where MAPE is undefined"):
        settings_for(Settings(var_dir=tmp_path, tuning_metric="mape"), with_zeros)


# --- metrics and their direction -------------------------------------------------------------


def test_regression_metrics_and_which_way_is_better() -> None:
    truth, predicted = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.0])
    metrics = regression_metrics(truth, predicted)
    assert metrics["rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 3))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["mape"] == pytest.approx((0.5 + 0.25) / 3)
    assert set(metrics) == {"rmse", "mae", "r2", "mape"}
    assert "mape" not in regression_metrics(np.array([0.0, 2.0]), np.array([0.1, 2.0]))
    for error in ("rmse", "mae", "mape"):
        assert direction(error) == "minimize"
        assert is_better(error, 1.0, 2.0) and not is_better(error, 2.0, 1.0)
        assert not is_better(error, 1.95, 2.0, margin=0.1)  # not by more than the margin
    assert direction("r2") == "maximize" and is_better("r2", 0.9, 0.8)


# --- the gate ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("regression-registry") / "var"


def _register(store: Path, name: str, params: dict, data: Dataset, halves: Split) -> str:
    settings = Settings(var_dir=store, model_name=name)
    configure_tracking(settings)
    with mlflow.start_run():
        model = fit_best(params, data, halves, seed=0)
        return log_and_register(model, params, data, halves, settings).version


def test_the_gate_promotes_the_lower_rmse_and_keeps_it(store: Path) -> None:
    data, halves = prices(), price_split()
    # a weak regressor: all but the intercept regularised away
    weak = _register(store, "prices", {"family": "ridge", "alpha": 1e6}, data, halves)
    strong = _register(store, "prices", {**RIDGE, "log_target": True}, data, halves)
    client = MlflowClient()
    assert client.get_model_version("prices", strong).tags["task"] == "regression"
    first = run_gate(client, "prices", weak, halves, "rmse", 0.0)
    assert first.promoted and first.reason == "no champion yet"
    better = run_gate(client, "prices", strong, halves, "rmse", 0.0)
    assert better.promoted, better.reason
    assert better.challenger_score < better.champion_score
    assert "beats" in better.reason
    worse = run_gate(client, "prices", weak, halves, "rmse", 0.0)  # the weak one again
    assert not worse.promoted and worse.challenger_score > worse.champion_score
    assert str(client.get_model_version_by_alias("prices", CHAMPION).version) == strong


def test_the_gate_refuses_to_compare_a_regressor_with_a_classifier(store: Path) -> None:
    demo = load_dataset("demo", None)
    demo_split = split(demo, 0.2, 42)
    classifier = _register(store, "mixed", {"family": "logreg", "C": 1.0}, demo, demo_split)
    client = MlflowClient()  # after `_register` set the tracking store
    # a version registered before the task tag existed is a classifier
    client.delete_model_version_tag("mixed", classifier, "task")
    assert run_gate(client, "mixed", classifier, demo_split, "roc_auc", 0.0).promoted
    regressor = _register(store, "mixed", RIDGE, prices(), price_split())
    decision = run_gate(client, "mixed", regressor, price_split(), "rmse", 0.0)
    assert not decision.promoted and decision.champion_score is None
    assert "cannot compare a regression challenger with the classification champion" in (
        decision.reason
    )
    assert "MLOPS_MODEL_NAME" in decision.reason
    assert client.get_model_version("mixed", regressor).tags["gate.decision"] == "rejected"
    assert str(client.get_model_version_by_alias("mixed", CHAMPION).version) == classifier


# --- serving a regressor ---------------------------------------------------------------------


def served_regressor(data: Dataset) -> ServedModel:
    params = {
        "family": "random_forest_regressor",
        **(family("random_forest_regressor").cheap_defaults or {}),
    }
    params["n_estimators"] = 20
    pipeline = build_pipeline(params, data.feature_types, seed=0).fit(data.X, data.y)
    loaded = LoadedModel(
        name="prices",
        version="1",
        run_id="run-1",
        model=pipeline,
        feature_types=dict(data.feature_types),
        classes=[],
        input_example=data.X.head(1),
        loaded_at="2026-12-07T00:00:00+00:00",
        task="regression",
    )
    return ServedModel.of(loaded)


def test_a_served_regressor_answers_values_on_the_frame_and_the_numeric_paths() -> None:
    mixed = prices()
    served = served_regressor(mixed)
    records = mixed.X.head(4).astype(object).where(mixed.X.head(4).notna(), None)
    scored = served.score_records(records.to_dict("records"))
    expected = served.loaded.model.predict(mixed.X.head(4)).tolist()
    assert scored.values == scored.labels == expected
    assert invocations_body(scored) == {"predictions": expected}
    body = predict_body(scored, ["a", "b", "c", "d"])
    assert body["predictions"][0] == {"prediction_id": "a", "value": expected[0]}
    assert prediction_schema([])["properties"]["predictions"]["items"]["required"] == [
        "prediction_id",
        "value",
    ]

    # all-numeric features: float matrices take the numeric transform, same values
    numeric = validate(price_frame().drop(columns=["District", "Garden"]), PRICE, source="f")
    fast = served_regressor(numeric)
    assert fast.numeric is not None
    rows = numeric.X.head(8)
    matrix = fast.input_rows(
        rows.astype(object).where(rows.notna(), None).to_dict("records")  # type: ignore[arg-type]
    )
    assert isinstance(matrix, np.ndarray)
    np.testing.assert_allclose(
        fast.score(matrix)[:, 0], fast.loaded.model.predict(pd.DataFrame(rows)), rtol=1e-12
    )


# --- live quality from feedback ----------------------------------------------------------------


def test_live_quality_of_a_regressor_is_its_rmse_and_mae_and_can_fire(tmp_path: Path) -> None:
    """Served values and reported true values in a real SQLite outcome store: the windows
    score RMSE and MAE, the quality event carries them, and the performance trigger fires
    when the live RMSE is worse than the holdout's by more than the margin's share of it."""
    settings = Settings(
        var_dir=tmp_path / "var", task="regression", ct_min_labels=20, ct_performance_margin=0.1
    )
    store = OutcomeStore(settings.ct_database)
    truth = np.linspace(100.0, 200.0, 40)
    served = truth + np.where(np.arange(40) % 2, 12.0, -12.0)  # off by 12 either way
    ids = [f"p{i}" for i in range(40)]
    store.record_predictions(
        PredictionRecord(pid, settings.model_name, "1", {"Area": 1.0}, value, None, NOW)
        for pid, value in zip(ids, served.tolist())
    )
    store.record_feedback(list(zip(ids, truth.tolist())))
    rows = store.labelled(settings.model_name, 100)
    live = ct.live_quality(rows, regression=True)
    assert live == {"rmse": pytest.approx(12.0), "mae": pytest.approx(12.0), "labelled": 40.0}

    def champion(holdout_rmse: float) -> ct.Champion:
        return ct.Champion(settings.model_name, "1", "run", NOW, None, {"rmse": holdout_rmse})

    assert ct.performance(settings, champion(10.0), store).fired is True  # 12 > 10 + 1
    holds = ct.performance(settings, champion(11.5), store)  # 12 < 11.5 + 1.15
    assert not holds.fired and "holds against" in holds.reason
    window, _ = ct.quality_windows(settings, champion(10.0), store, NOW)
    assert window.scores == {"rmse": pytest.approx(12.0), "mae": pytest.approx(12.0)}
    document = events.quality_event(
        model_name=settings.model_name,
        model_version="1",
        window=vars(window),
        metric="rmse",
        holdout={"rmse": 10.0, "mae": 8.0, "r2": 0.9},
    )["mlops"]["quality"]
    assert document["rmse"] == pytest.approx(12.0) and document["holdout_score"] == 10.0
    assert document["holdout"] == {"rmse": 10.0, "mae": 8.0}


def test_evaluate_scores_a_labelled_file_with_a_regressors_errors(tmp_path: Path) -> None:
    data = prices()
    loaded = served_regressor(data).loaded
    csv = tmp_path / "prices.csv"
    price_frame(rows=60, seed=5).to_csv(csv, index=False)
    evaluation = evaluate_file(csv, loaded, PRICE, tmp_path / "report")
    frame = pd.read_csv(csv)
    expected = regression_metrics(
        frame[PRICE], loaded.model.predict(loaded.prepare(frame.drop(columns=PRICE)))
    )
    assert evaluation.metrics == pytest.approx(expected) and evaluation.classes == []
    assert sorted(path.name for path in evaluation.plots.values()) == [
        "predicted_vs_actual.png",
        "residuals.png",
    ]
    frame[PRICE] = frame[PRICE].astype(object)
    frame.loc[3, PRICE] = "unknown"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError, match="'Price' must be numeric .* got 'unknown'"):
        evaluate_file(csv, loaded, PRICE, tmp_path / "report")


# --- the data report ---------------------------------------------------------------------------


def test_mlops_data_states_the_task_and_why_and_takes_task(tmp_path: Path) -> None:
    from serving.main import app

    csv = tmp_path / "prices.csv"
    price_frame(rows=60).to_csv(csv, index=False)
    env = {"MLOPS_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    inferred = CliRunner().invoke(app, ["data", "--data", str(csv), "--target", PRICE], env=env)
    assert inferred.exit_code == 0, inferred.output
    assert "regression (numeric target with fractions (60 distinct values))" in inferred.output
    forced = CliRunner().invoke(
        app,
        ["data", "--data", str(csv), "--target", "Rooms", "--task", "regression"],
        env=env,
    )
    assert forced.exit_code == 0, forced.output
    assert "regression (set by --task / MLOPS_TASK)" in forced.output
    refused = CliRunner().invoke(
        app, ["data", "--data", str(csv), "--target", PRICE, "--task", "classification"], env=env
    )
    assert refused.exit_code == 2
    assert "looks continuous (60 distinct numeric values in 60 rows)" in refused.output
    assert "use --task regression" in refused.output
