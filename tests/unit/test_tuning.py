"""ml.tuning: conditional search space, real pruning, RDB storage shared across processes."""

from __future__ import annotations

import optuna
import pytest

from ml.config import Settings
from ml.data import load_dataset, split
from ml.tuning import Objective, create_study, suggest_params, tune


@pytest.fixture(scope="module")
def demo_split():
    dataset = load_dataset("demo", None)
    return dataset, split(dataset, 0.2, 42)


def test_search_space_is_conditional_on_family() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[str]] = {}
    for _ in range(30):
        trial = study.ask()
        params = suggest_params(trial, ["logreg", "random_forest", "hist_gb"])
        seen.setdefault(params["family"], set()).update(params)
        study.tell(trial, 0.5)
    assert seen["logreg"] == {"family", "C"}
    assert "n_estimators" in seen["random_forest"] and "C" not in seen["random_forest"]
    assert "learning_rate" in seen["hist_gb"] and "max_depth" not in seen["hist_gb"]


def test_pruner_stops_a_clearly_worse_trial(tmp_path, demo_split) -> None:
    """Five good trials set the median; a crippled forest is pruned after its first fold."""
    dataset, data_split = demo_split
    settings = Settings(var_dir=tmp_path, families=["logreg", "random_forest"])
    study = create_study(settings, "prune-check")
    for _ in range(5):
        study.enqueue_trial({"family": "logreg", "C": 1.0})
    study.enqueue_trial(
        {
            "family": "random_forest",
            "n_estimators": 50,
            "max_depth": 2,
            "min_samples_leaf": 10,
            "max_features": "log2",
        }
    )
    study.optimize(
        Objective(data_split, dataset.feature_types, settings, tracking=None), n_trials=6
    )
    states = [trial.state for trial in study.trials]
    assert states[:5] == [optuna.trial.TrialState.COMPLETE] * 5
    assert states[5] == optuna.trial.TrialState.PRUNED
    assert len(study.trials[5].intermediate_values) == 1  # stopped after fold 1 of 3


def test_study_in_rdb_storage_is_resumed_by_name(tmp_path, demo_split) -> None:
    dataset, data_split = demo_split
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=2)
    first = tune(data_split, dataset.feature_types, settings, "shared", tracker=None)
    second = tune(data_split, dataset.feature_types, settings, "shared", tracker=None)
    assert first.complete + first.pruned == 2
    assert second.complete + second.pruned == 4  # the second run joined the same study
    loaded = optuna.load_study(study_name="shared", storage=settings.optuna_storage)
    assert len(loaded.trials) == 4
    assert second.best_value == pytest.approx(loaded.best_value)


def test_sqlite_study_storage_uses_wal(tmp_path) -> None:
    """Optuna's many small transactions per trial must not each wait for an fsync."""
    import sqlite3

    settings = Settings(var_dir=tmp_path, optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study = create_study(settings, "wal")
    study.enqueue_trial({"family": "logreg", "C": 1.0})
    with sqlite3.connect(tmp_path / "optuna.db") as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_trial_tracker_writes_nested_runs_and_counts_its_cpu(tmp_path, demo_split) -> None:
    """Real MLflow SQLite store: every trial becomes a child run; the worker's CPU is counted."""
    from mlflow.tracking import MlflowClient

    from ml.tuning import TrialTracker

    dataset, data_split = demo_split
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id).info.run_id
    tracker = TrialTracker(client, experiment_id, parent, "roc_auc")
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=2)
    tune(data_split, dataset.feature_types, settings, "tracked", tracker)  # closes the tracker
    runs = client.search_runs([experiment_id], "tags.`mlops.kind` = 'trial'")
    children = [run for run in runs if run.data.tags["mlflow.parentRunId"] == parent]
    assert len(children) == 2
    assert all(len(run.data.metrics) >= 2 for run in children)  # fold scores, duration
    assert tracker.write_cpu_s > 0
