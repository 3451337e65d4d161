"""Optuna search over several model families; every trial is a nested MLflow run.

Trials log through `MlflowClient` with an explicit parent run id rather than the fluent API:
it is thread-safe for `--n-jobs` > 1 and costs three tracking calls per trial.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.model_selection import StratifiedKFold
from sqlalchemy import event

from ml.config import Settings
from ml.data import FeatureType, Split
from ml.evaluation import direction, score
from ml.features import build_pipeline

log = logging.getLogger(__name__)
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
STARTUP_TRIALS = 4  # random trials before TPE models the space (create_study says why)


@dataclass(frozen=True)
class TuningResult:
    """The study's best trial and how many trials ended in each state."""

    study_name: str
    best_params: dict[str, Any]
    best_value: float
    complete: int
    pruned: int
    failed: int


def suggest_params(trial: optuna.Trial, families: list[str]) -> dict[str, Any]:
    """A conditional search space: each family has its own hyperparameters."""
    family = trial.suggest_categorical("family", families)
    params: dict[str, Any] = {"family": family}
    if family == "logreg":
        params["C"] = trial.suggest_float("C", 1e-3, 1e2, log=True)
    elif family == "random_forest":
        params["n_estimators"] = trial.suggest_int("n_estimators", 50, 300, step=25)
        params["max_depth"] = trial.suggest_int("max_depth", 2, 20)
        params["min_samples_leaf"] = trial.suggest_int("min_samples_leaf", 1, 10)
        params["max_features"] = trial.suggest_categorical("max_features", ["sqrt", "log2"])
    elif family == "hist_gb":
        params["learning_rate"] = trial.suggest_float("learning_rate", 0.01, 0.3, log=True)
        params["max_iter"] = trial.suggest_int("max_iter", 50, 300, step=25)
        params["max_leaf_nodes"] = trial.suggest_int("max_leaf_nodes", 7, 63)
        params["l2_regularization"] = trial.suggest_float("l2_regularization", 1e-6, 1.0, log=True)
    else:
        raise ValueError(f"families: unknown model family {family!r}")
    return params


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's RDB storage. A SQLite file runs in WAL mode with normal syncing: Optuna
    makes about a dozen small transactions per trial, and with SQLite's default rollback
    journal each one waits for an fsync (55 -> 33 ms of storage time per trial here).
    Processes on one host still share the file; machines share a database server."""
    storage = optuna.storages.RDBStorage(url)
    if storage.engine.dialect.name == "sqlite":
        event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()  # pooled connections predate the listener
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_study(settings: Settings, study_name: str) -> optuna.Study:
    """Seeded TPE + a percentile pruner in RDB storage, so other processes can join the study.

    The pruner stops a trial whose running CV mean falls in the worst quarter of finished
    trials at that fold. A median pruner (worst half) was too eager on small data: one fold's
    noise outweighs the gap between good configurations, so it discarded them (bundled data,
    60 s: 84 of 102 trials pruned and RandomizedSearchCV's best never reached; worst quarter:
    60 of 313 pruned and that best reached in 0.37 of RandomizedSearchCV's time).

    TPE starts modelling after 4 random trials, not Optuna's 10: on 50,000 rows only about 25
    trials fit in 3 minutes, and ten random ones took as long as RandomizedSearchCV took to find
    its best. The benchmark's race per seed (42, 43, 44): 50,000 rows 1.34 / 0.96 / 1.06 ->
    1.07 / 0.74 / 0.38 of RandomizedSearchCV's time, bundled data 0.58 / 0.28 / not reached ->
    0.45 / 0.25 / not reached.
    """
    with warnings.catch_warnings():  # multivariate/group TPE is "experimental" since 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True, group=True, n_startup_trials=STARTUP_TRIALS
        )
    return optuna.create_study(
        study_name=study_name,
        storage=study_storage(settings.optuna_storage),
        load_if_exists=True,
        direction=direction(settings.tuning_metric),
        sampler=sampler,
        pruner=optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=0),
    )


class Objective:
    """Cross-validates one trial, reporting each fold so the pruner can stop it early."""

    def __init__(
        self,
        split: Split,
        feature_types: dict[str, FeatureType],
        settings: Settings,
        tracking: "TrialTracker | None",
    ) -> None:
        self.X = split.X_train  # pylint: disable=invalid-name
        self.y = split.y_train
        self.feature_types = feature_types
        self.settings = settings
        self.tracking = tracking
        folds = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
        self.folds = list(folds.split(self.X, self.y))

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, list(self.settings.families))
        started = time.perf_counter()
        fold_scores: list[float] = []
        state = "FAILED"
        try:
            for step, (train_idx, valid_idx) in enumerate(self.folds):
                model = build_pipeline(params, self.feature_types, self.settings.seed)
                model.fit(self.X.iloc[train_idx], self.y.iloc[train_idx])
                fold_scores.append(
                    score(
                        self.settings.tuning_metric,
                        model,
                        self.X.iloc[valid_idx],
                        self.y.iloc[valid_idx],
                    )
                )
                trial.report(float(np.mean(fold_scores)), step)
                # After the last fold there is nothing left to save: no pruning check
                # (each one reads the study's trials from storage).
                if step < len(self.folds) - 1 and trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned(f"pruned after fold {step + 1}")
            state = "COMPLETE"
            return float(np.mean(fold_scores))
        finally:
            trial.set_user_attr("duration_s", time.perf_counter() - started)
            if self.tracking is not None:
                self.tracking.log_trial(
                    trial, params, fold_scores, state, time.perf_counter() - started
                )


class TrialTracker:
    """Logs each trial as a child run of the study's parent run, off the trial's critical path.

    A single background worker makes the three tracking calls per trial (create, log_batch,
    terminate), so CPU-bound trials never wait on the tracking store; `close()` drains it.
    """

    def __init__(
        self, client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-tracking")
        self._pending: list[Future[None]] = []
        self.write_cpu_s = 0.0  # CPU the worker spent writing trial runs: tracking's own cost

    def log_trial(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        fold_scores: list[float],
        state: str,
        duration_s: float,
    ) -> None:
        """Hand the finished trial to the tracking worker and return at once."""
        record = TrialRecord(
            trial.number,
            trial.study.study_name,
            dict(params),
            list(fold_scores),
            state,
            duration_s,
            int(time.time() * 1000),
        )
        self._pending.append(self._worker.submit(self._write, record))

    def close(self) -> None:
        """Wait for every trial run to be written; report (not raise) tracking failures."""
        self._worker.shutdown(wait=True)
        failures = [future.exception() for future in self._pending if future.exception()]
        self._pending.clear()
        if failures:
            log.warning(
                "%d trial runs could not be logged to MLflow; first error: %s",
                len(failures),
                failures[0],
            )

    def _write(self, record: "TrialRecord") -> None:
        started = time.thread_time()
        try:
            self._write_run(record)
        finally:
            self.write_cpu_s += time.thread_time() - started

    def _write_run(self, record: "TrialRecord") -> None:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{record.number:03d}-{record.params['family']}",
            tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                "optuna.trial": str(record.number),
                "optuna.state": record.state,
                "optuna.study": record.study_name,
                "mlops.kind": "trial",
            },
        )
        stamp = record.finished_ms
        metrics = [
            Metric(f"cv_{self.metric}", value, stamp, step)
            for step, value in enumerate(record.fold_scores)
        ]
        if record.state == "COMPLETE":
            mean = float(np.mean(record.fold_scores))
            metrics.append(Metric(f"cv_{self.metric}_mean", mean, stamp, 0))
        metrics.append(Metric("duration_s", record.duration_s, stamp, 0))
        params = [Param(key, str(value)) for key, value in record.params.items()]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(record.state, "FAILED")
        self.client.set_terminated(run.info.run_id, status=status, end_time=stamp)


@dataclass(frozen=True)
class TrialRecord:
    """What one finished trial hands to the tracking worker."""

    number: int
    study_name: str
    params: dict[str, Any]
    fold_scores: list[float]
    state: str
    duration_s: float
    finished_ms: int


def tune(
    split: Split,
    feature_types: dict[str, FeatureType],
    settings: Settings,
    study_name: str,
    tracker: TrialTracker | None,
    callbacks: list[TrialCallback] | None = None,
) -> TuningResult:
    """Run `settings.trials` trials (or until the timeout) and return the best."""
    study = create_study(settings, study_name)
    objective = Objective(split, feature_types, settings, tracker)
    try:
        study.optimize(
            objective,
            n_trials=settings.trials,
            timeout=settings.timeout_s,
            n_jobs=settings.n_jobs,
            callbacks=callbacks or [],
            catch=(ValueError, ArithmeticError),  # one bad configuration must not end the study
        )
    finally:
        if tracker is not None:
            tracker.close()
    states = [trial.state for trial in study.trials]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    if complete == 0:
        raise RuntimeError(f"study {study_name!r}: no trial completed; see the trial runs")
    best = study.best_trial
    return TuningResult(
        study_name=study_name,
        best_params={
            "family": best.params["family"],
            **{k: v for k, v in best.params.items() if k != "family"},
        },
        best_value=float(study.best_value),
        complete=complete,
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        failed=states.count(optuna.trial.TrialState.FAIL),
    )


def study_figures(study_name: str, settings: Settings) -> dict[str, Any]:
    """Optimization history and parameter importance as matplotlib figures (no plotly)."""
    study = optuna.load_study(study_name=study_name, storage=settings.optuna_storage)
    figures: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "few trials per regime" notes
        figures["optimization_history.png"] = (
            optuna.visualization.matplotlib.plot_optimization_history(study).figure
        )
        try:
            figures["param_importances.png"] = (
                optuna.visualization.matplotlib.plot_param_importances(study).figure
            )
        except (ValueError, RuntimeError, ZeroDivisionError):
            pass  # fewer than two comparable complete trials: nothing to rank yet
    return figures
