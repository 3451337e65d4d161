"""Optuna search over several model families; every trial is a nested MLflow run.

Trials log through `MlflowClient` with an explicit parent run id rather than the fluent API:
it is thread-safe for `--n-jobs` > 1 and costs three tracking calls per trial.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sklearn.model_selection import StratifiedKFold
from sqlalchemy import event
from threadpoolctl import threadpool_limits

from ml.config import Settings
from ml.data import FeatureType, Split
from ml.evaluation import direction, score
from ml.features import build_classifier, build_preprocessor

log = logging.getLogger(__name__)
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
STARTUP_TRIALS = 4  # trials before TPE models the space (create_study says why)
# scikit-learn's defaults for the cheap families, tried first (`enqueue_defaults`). The
# forest's default is left out: on 50,000 rows one forest trial costs as much as ten of these.
CHEAP_DEFAULTS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 1.0},
    "hist_gb": {
        "learning_rate": 0.1,
        "max_iter": 100,
        "max_leaf_nodes": 31,
        "l2_regularization": 1e-6,  # scikit-learn's 0.0, at the floor of the log-scaled range
    },
}


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
    Processes on one host still share the file; machines share a database server.

    Every SQLite transaction also starts with BEGIN IMMEDIATE, taking the write lock up front.
    Optuna starts a queued trial by reading that it is WAITING and then marking it RUNNING,
    relying on SELECT ... FOR UPDATE, which SQLite ignores: two workers could both start the
    same queued trial, and the second to finish crashed `optimize` ("Cannot tell a COMPLETE
    trial"; optuna/optuna#4002)."""
    storage = optuna.storages.RDBStorage(url)
    if storage.engine.dialect.name == "sqlite":
        event.listen(storage.engine, "connect", _sqlite_connect)
        event.listen(storage.engine, "begin", _begin_immediate)
        storage.engine.dispose()  # pooled connections predate the listeners
    return storage


def _sqlite_connect(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # the driver must not BEGIN on its own: we do
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class FoldGapPruner(optuna.pruners.BasePruner):
    """Stops a trial whose running CV mean trails the best trial's at the same fold by more
    than this study's fold-to-fold spread (the median, over complete trials, of the standard
    deviation of their fold scores): clearly behind, not one unlucky fold.

    The bar follows the data's noise. On the bundled 455 training rows folds disagree by about
    0.005 ROC AUC, so only clearly weaker trials stop; on 50,000 rows by about 0.0004, so a
    forest 0.001 behind the best boosted model stops after one fold instead of costing a core
    for a minute. A percentile pruner has one bar for both: the worst quarter let those forests
    run on (logistic regression's trials pull the quarter down), a median pruner discarded good
    configurations on the bundled data.
    """

    def __init__(self, n_startup_trials: int = 2) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < self.n_startup_trials:
            return False
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        best = max(complete, key=lambda done: sign * float(done.value or 0.0))
        if step not in best.intermediate_values:  # it ran with another number of folds
            return False
        behind = sign * (best.intermediate_values[step] - trial.intermediate_values[step])
        spreads = [
            float(np.std(done.user_attrs["fold_scores"], ddof=1))
            for done in complete
            if len(done.user_attrs.get("fold_scores", ())) > 1
        ]
        return bool(spreads) and behind > statistics.median(spreads)


def create_study(settings: Settings, study_name: str) -> optuna.Study:
    """Seeded TPE + the fold-gap pruner in RDB storage, so other processes can join the study.

    TPE models the space after 4 trials, not Optuna's 10: on 50,000 rows only about 25 trials
    fit in 3 minutes, and ten random ones took as long as RandomizedSearchCV took to find its
    best (docs/training.md has the measurements).
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
        pruner=FoldGapPruner(),
    )


def enqueue_defaults(study: optuna.Study, families: list[str]) -> None:
    """Queue scikit-learn's defaults for the cheap families as the study's first trials.

    Library defaults are a strong start on most tables and take seconds: the pruner gets a
    bar and TPE a good region before any expensive random draw. A resumed study already has
    them (`skip_if_exists`).
    """
    for family, params in CHEAP_DEFAULTS.items():
        if family in families:
            study.enqueue_trial(
                {"family": family, **params},
                user_attrs={"start": "scikit-learn default"},
                skip_if_exists=True,
            )


@dataclass(frozen=True)
class PreparedFold:
    """One CV fold with the preprocessor already fitted on its training rows."""

    X_train: Any  # pylint: disable=invalid-name
    y_train: Any
    X_valid: Any  # pylint: disable=invalid-name
    y_valid: Any

    @classmethod
    def fit(
        cls,
        feature_types: dict[str, FeatureType],
        X: pd.DataFrame,  # noqa: N803
        y: pd.Series,
        train_idx: np.ndarray,
        valid_idx: np.ndarray,
    ) -> "PreparedFold":
        """Fit the preprocessor on the fold's training rows only; transform both sides."""
        preprocess = build_preprocessor(feature_types)
        return cls(
            preprocess.fit_transform(X.iloc[train_idx]),
            y.iloc[train_idx],
            preprocess.transform(X.iloc[valid_idx]),
            y.iloc[valid_idx],
        )


class Objective:
    """Cross-validates one trial, reporting each fold so the pruner can stop it early.

    The preprocessor (impute, scale, one-hot) has no hyperparameters, so each fold's is fitted
    once, on that fold's training rows only, and every trial fits just its classifier on the
    transformed rows: the same scores as fitting the whole pipeline per trial, without
    refitting the same preprocessor hundreds of times (on the bundled data that refit and its
    input validation were most of a logistic regression trial's time).
    """

    def __init__(
        self,
        split: Split,
        feature_types: dict[str, FeatureType],
        settings: Settings,
        tracking: "TrialTracker | None",
    ) -> None:
        self.settings = settings
        self.tracking = tracking
        folds = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
        self.folds = [
            PreparedFold.fit(feature_types, split.X_train, split.y_train, train, valid)
            for train, valid in folds.split(split.X_train, split.y_train)
        ]
        # Parallel trials share the cores: each trial's OpenMP team (the boosted trees) gets
        # its slice, as joblib gives its workers. Two teams as wide as the machine on 2 cores
        # made two concurrent boosted fits take 2.4 s instead of 1.6 s. The limit is set in the
        # trial's own thread: OpenMP's thread count is a per-thread setting. joblib counts the
        # cores a container's CPU quota allows, not the host's.
        self.omp_threads = (
            max(1, joblib.cpu_count() // settings.n_jobs) if settings.n_jobs > 1 else None
        )

    def __call__(self, trial: optuna.Trial) -> float:
        with threadpool_limits(self.omp_threads, user_api="openmp"):
            return self._cross_validate(trial)

    def _cross_validate(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, list(self.settings.families))
        started = time.perf_counter()
        fold_scores: list[float] = []
        state = "FAILED"
        try:
            for step, fold in enumerate(self.folds):
                model = build_classifier(params, self.settings.seed)
                model.fit(fold.X_train, fold.y_train)
                fold_scores.append(
                    score(self.settings.tuning_metric, model, fold.X_valid, fold.y_valid)
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
            trial.set_user_attr("fold_scores", fold_scores)  # FoldGapPruner's noise estimate
            if self.tracking is not None:
                self.tracking.log_trial(
                    trial, params, fold_scores, state, time.perf_counter() - started
                )


class TrialTracker:
    """Logs each trial as a child run of the study's parent run, off the trial's critical path.

    A single background worker makes the three tracking calls per trial (create, log_batch,
    terminate), so trials never wait on the store's disk writes; `close()` drains it. The
    calls' Python (about 20 ms of CPU per trial on the local SQLite store) still shares the
    GIL with the trials: docs/training.md has what that costs.
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
    enqueue_defaults(study, list(settings.families))
    objective = Objective(split, feature_types, settings, tracker)
    try:
        # One BLAS thread for the whole study: this model space's matrix products are too
        # small to gain from more, and OpenBLAS's idle threads spin on the cores that trials
        # and the tracking thread need (30 sequential trials: 11.7 -> 7.2 s CPU). The limit
        # is process-wide in OpenBLAS, so it is set once here, not per trial.
        with threadpool_limits(1, user_api="blas"):
            study.optimize(
                objective,
                n_trials=settings.trials,
                timeout=settings.timeout_s,
                n_jobs=settings.n_jobs,
                callbacks=callbacks or [],
                catch=(ValueError, ArithmeticError),  # one bad configuration must not end it
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
