"""ml.study: a study's identity covers its whole objective; a changed objective starts a new
study and says what changed; the study storage follows the tracking store."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ml.common.stages import STUDY_LOGGER
from ml.config import Settings
from ml.families import FAMILIES
from ml.pipeline import run_pipeline
from ml.storage import study_storage
from ml.common.tasks import CLASSIFICATION
from ml.study import (
    StudyIdentity,
    open_study,
    plan_study,
    space_definition,
    warn_if_unshared,
)

FINGERPRINT = "ab" * 32


def _identity(**overrides: object) -> StudyIdentity:
    fingerprint = str(overrides.pop("fingerprint", FINGERPRINT))
    task = str(overrides.pop("task", CLASSIFICATION))
    return StudyIdentity.of(Settings(**overrides), fingerprint, task)  # type: ignore[arg-type]


def _notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == STUDY_LOGGER]


def test_the_same_inputs_give_the_same_name() -> None:
    assert _identity().name == _identity().name
    name = _identity(model_name="churn", tuning_metric="f1", cv_folds=4).name
    assert name.startswith(f"churn-{FINGERPRINT[:12]}-classification-f1-cv4-")
    assert name == _identity(model_name="churn", tuning_metric="f1", cv_folds=4).name


@pytest.mark.parametrize(
    "change",
    [
        {"model_name": "other"},
        {"fingerprint": "cd" * 32},
        {"task": "regression"},
        {"tuning_metric": "f1"},
        {"tuning_metric": "log_loss"},  # and the direction with it
        {"decision_metric": "f1"},  # binary trials scored at their own threshold
        {"cv_folds": 5},
        {"test_size": 0.25},
        {"seed": 7},
        {"families": ["logreg"]},
        {"families": ["hist_gb", "logreg", "random_forest"]},  # the choices' order
    ],
    ids=lambda change: next(iter(change)),
)
def test_each_component_changes_the_name(change: dict[str, object]) -> None:
    assert _identity(**change).name != _identity().name


def test_the_direction_is_recorded_with_the_metric() -> None:
    assert _identity().direction == "maximize"
    assert _identity(tuning_metric="log_loss").direction == "minimize"


def test_editing_a_family_changes_its_space_definition() -> None:
    """The definition is traced from what the code asks for: a new range, or a changed fixed
    argument of the estimator, is a new space; the same code is the same space."""
    logreg = FAMILIES["logreg"]
    assert space_definition(logreg) == space_definition(logreg)
    wider = dataclasses.replace(
        logreg, search_space=lambda trial: {"C": trial.suggest_float("C", 1e-4, 1e2, log=True)}
    )
    assert space_definition(wider) != space_definition(logreg)
    fewer_iterations = dataclasses.replace(
        logreg, build=lambda params, seed: logreg.build(params, seed).set_params(max_iter=50)
    )
    assert space_definition(fewer_iterations) != space_definition(logreg)
    unscaled = dataclasses.replace(logreg, scale_numeric=False)
    assert space_definition(unscaled) != space_definition(logreg)


def test_a_new_study_names_what_changed_since_the_last_one_of_that_model_and_data(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=STUDY_LOGGER)
    settings.var_dir.mkdir(parents=True)  # the pipeline's configure_tracking makes it
    first = plan_study(settings, FINGERPRINT)
    assert first.note == f"new study {first.name}"
    open_study(settings, first)
    assert plan_study(settings, FINGERPRINT).note == f"resuming study {first.name}"

    changed = settings.model_copy(update={"tuning_metric": "log_loss", "cv_folds": 4})
    second = plan_study(changed, FINGERPRINT)
    assert second.name != first.name
    assert second.note == (
        f"new study {second.name}: tuning metric changed roc_auc -> log_loss, "
        "direction changed maximize -> minimize, CV folds changed 3 -> 4"
    )
    open_study(changed, second)
    assert _notes(caplog) == [first.note, second.note]
    # The latest study of the model and data is the one compared with.
    third = plan_study(changed.model_copy(update={"cv_folds": 5}), FINGERPRINT)
    assert third.note.endswith(": CV folds changed 4 -> 5")
    # Other data is not "a change": nothing to compare with.
    other = plan_study(settings, "cd" * 32)
    assert other.note == f"new study {other.name}"


def test_an_explicit_study_name_wins(settings: Settings) -> None:
    settings.var_dir.mkdir(parents=True)
    named = settings.model_copy(update={"study_name": "mine", "tuning_metric": "f1"})
    plan = plan_study(named, FINGERPRINT)
    assert (plan.name, plan.identity) == ("mine", None)


def test_the_study_file_sits_beside_a_sqlite_tracking_file(tmp_path: Path) -> None:
    var = tmp_path / "var"
    assert Settings(var_dir=var).optuna_storage == f"sqlite:///{var / 'optuna.db'}"
    elsewhere = Settings(var_dir=var, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert elsewhere.optuna_storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    named = Settings(var_dir=var, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'team-a.db'}")
    assert named.optuna_storage == f"sqlite:///{tmp_path / 'team-a.optuna.db'}"
    database = "postgresql://mlops@db.example/mlflow"
    # never the tracking database: Optuna refuses one whose alembic_version is MLflow's
    in_database = Settings(var_dir=var, mlflow_tracking_uri=database)
    assert in_database.optuna_storage == f"sqlite:///{var / 'optuna.db'}"
    assert in_database.unshared_study_storage
    own = Settings(var_dir=var, mlflow_tracking_uri=database, optuna_storage="sqlite:///x.db")
    assert own.optuna_storage == "sqlite:///x.db"


def test_a_tracking_server_without_study_storage_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Settings(var_dir=tmp_path / "var", mlflow_tracking_uri="http://mlflow.example:5000")
    assert server.optuna_storage == f"sqlite:///{tmp_path / 'var' / 'optuna.db'}"
    assert server.unshared_study_storage
    with caplog.at_level(logging.WARNING, logger=STUDY_LOGGER):
        warn_if_unshared(server)
        warn_if_unshared(server)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "other machines" in warnings[0].getMessage()
    shared = server.model_copy(update={"optuna_storage": "postgresql://mlops@db.example/optuna"})
    assert not shared.unshared_study_storage


def test_a_changed_metric_counts_no_trial_of_the_earlier_study(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Two real runs (demo data, logistic regression, 3 trials): the f1 run tunes, prunes
    against and registers only its own trials."""
    caplog.set_level(logging.INFO, logger=STUDY_LOGGER)
    tiny = settings.model_copy(update={"families": ["logreg"], "trials": 3})
    first = run_pipeline(tiny)
    second = run_pipeline(tiny.model_copy(update={"tuning_metric": "f1"}))

    assert second.tuning.study_name != first.tuning.study_name
    assert _notes(caplog)[-1] == (
        f"new study {second.tuning.study_name}: tuning metric changed roc_auc -> f1, "
        "decision metric changed none -> f1"  # f1 trials are scored at their own threshold
    )
    storage = study_storage(tiny.optuna_storage)
    before = optuna.load_study(study_name=first.tuning.study_name, storage=storage)
    after = optuna.load_study(study_name=second.tuning.study_name, storage=storage)
    assert len(before.trials) == 3 and len(after.trials) == 3  # the first left untouched
    assert [trial.number for trial in after.trials] == [0, 1, 2]
    best = after.best_trial
    assert second.tuning.best_value == pytest.approx(best.value)
    assert second.tuning.best_params == best.params
    assert second.tuning.complete + second.tuning.pruned == 3
    assert second.tuning.threshold == best.user_attrs["decision_threshold"]

    client = MlflowClient(tiny.mlflow_tracking_uri)
    version = client.get_model_version(tiny.model_name, second.trained.version)
    assert version.run_id == second.run_id
    run = client.get_run(second.run_id)
    assert run.data.metrics["best_cv_f1"] == pytest.approx(best.value)
    assert float(run.data.params["best_C"]) == pytest.approx(best.params["C"])
    children = client.search_runs(
        [second.experiment_id], f"tags.mlflow.parentRunId = '{second.run_id}'"
    )
    assert {run.data.tags["optuna.study"] for run in children} == {second.tuning.study_name}
    assert len(children) == 3
