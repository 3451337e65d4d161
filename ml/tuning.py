"""Optuna search over several model families; every trial is a nested MLflow run.

Parallel trials (`--n-jobs` > 1) run in forked worker processes on the study's RDB storage:
a trial on a few hundred rows is mostly Python, and threads would take turns for the GIL.
Forked workers start with everything imported and every fold prepared (a spawned one spent
4-8 s importing scikit-learn and MLflow, the length of a whole study on small tables).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from ml.config import Settings
from ml.data import FeatureType, Split
from ml.decision import choose_threshold, decide
from ml.evaluation import direction, prediction_metrics, score
from ml.common.tasks import REGRESSION
from ml.families import all_families, LOG_TARGET, family
from ml.features import build_estimator, build_preprocessor
from ml.common.signals import (
    EXIT_CODE,
    Terminated,
    die_with_parent,
    quiet_terminations,
    sigterm_allowed,
    sigterm_deferred,
)
from ml.storage import study_storage
from ml.forking import FORK, join_reading, next_message, start
from ml.tracking import TrialTracker

log = logging.getLogger(__name__)
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
STARTUP_TRIALS = 4  # trials before TPE models the space (create_study says why)
THRESHOLD_ATTR = "decision_threshold"  # a complete trial's threshold (binary, decision metric)


@dataclass(frozen=True)
class TuningResult:
    """The study's best trial and how many trials ended in each state."""

    study_name: str
    best_params: dict[str, Any]
    best_value: float
    complete: int
    pruned: int
    failed: int
    # The best trial's decision threshold, chosen on its out-of-fold probabilities; None when
    # the model decides by the most probable class (multiclass, or no decision metric).
    threshold: float | None = None


def suggest_params(
    trial: optuna.Trial, families: list[str], log_target: bool = False
) -> dict[str, Any]:
    """A conditional search space: the family first, then that family's own space; with
    `log_target`, whether the regressor learns log1p of the target."""
    name = trial.suggest_categorical("family", families)
    params = {"family": name, **family(name).search_space(trial)}
    if log_target:
        params[LOG_TARGET] = trial.suggest_categorical(LOG_TARGET, [False, True])
    return params


def log_target_allowed(settings: Settings, y: pd.Series) -> bool:
    """A regression target above -1 can be learnt as log1p(target) (the search chooses)."""
    return settings.task == REGRESSION and bool(y.min() > -1)


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

    Intermediate values are fold scores (`Objective` reports each fold's). The bar is worked
    out once per trial, at its first check, from the trials the sampler read when the trial
    started: a second storage read per trial cost a logistic regression trial on the bundled
    data 4 ms of its 60. A trial that completes elsewhere in the meantime raises the bar from
    the next trial on.
    """

    def __init__(self, n_startup_trials: int = 2) -> None:
        self.n_startup_trials = n_startup_trials
        self._bar: tuple[int, _Bar | None] | None = None  # (trial number, its bar)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if self._bar is None or self._bar[0] != trial.number:
            self._bar = (trial.number, _Bar.of(study, self.n_startup_trials))
        against = self._bar[1]
        if against is None or step >= len(against.best_running_means):
            return False  # too few complete trials, or the best ran fewer folds
        running_mean = float(np.mean([trial.intermediate_values[k] for k in range(step + 1)]))
        behind = against.sign * (against.best_running_means[step] - running_mean)
        return behind > against.fold_spread


def trials_read_at_trial_start(
    study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]
) -> list[optuna.trial.FrozenTrial]:
    """The study's trials in `states` as the sampler read them when the running trial started.

    Optuna keeps that list for the running trial; only the private `Study._get_trials(...,
    use_cache=True)` returns it. The public `study.get_trials(deepcopy=False, states=...)`
    reads the storage again: a second read per trial cost a logistic regression trial on the
    bundled data 4 ms of its 60 (8% of the throughput with 2 workers). The one private Optuna
    call of tuning; tests/unit/test_tuning.py fails when an upgrade changes it (a changed
    signature, or a list that is read from storage after all).
    """
    return study._get_trials(  # pylint: disable=protected-access
        deepcopy=False, states=states, use_cache=True
    )


@dataclass(frozen=True)
class _Bar:
    """What FoldGapPruner compares a trial with: the best trial's running CV means and the
    study's median fold-to-fold standard deviation."""

    sign: float  # +1 when higher scores are better
    best_running_means: list[float]
    fold_spread: float

    @classmethod
    def of(cls, study: optuna.Study, n_startup_trials: int) -> "_Bar | None":
        """The bar from the study's complete trials; None until there are enough of them."""
        complete = trials_read_at_trial_start(study, (optuna.trial.TrialState.COMPLETE,))
        fold_scores = [_fold_scores(done) for done in complete]
        spreads = [float(np.std(scores, ddof=1)) for scores in fold_scores if len(scores) > 1]
        if len(complete) < n_startup_trials or not spreads:
            return None
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        best = max(range(len(complete)), key=lambda i: sign * float(complete[i].value or 0.0))
        running = np.cumsum(fold_scores[best]) / np.arange(1, len(fold_scores[best]) + 1)
        return cls(sign, [float(mean) for mean in running], statistics.median(spreads))


def _fold_scores(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The trial's fold scores in fold order, up to the first fold it did not report."""
    scores: list[float] = []
    while len(scores) in trial.intermediate_values:
        scores.append(trial.intermediate_values[len(scores)])
    return scores


def create_study(settings: Settings, study_name: str) -> optuna.Study:
    """Seeded TPE + the fold-gap pruner in RDB storage, so other processes can join the study.

    TPE models the space after 4 trials, not Optuna's 10: on 50,000 rows only about 25 trials
    fit in 3 minutes, and ten random ones took as long as RandomizedSearchCV took to find its
    best (docs/training.md has the measurements).
    """
    return optuna.create_study(
        study_name=study_name,
        storage=study_storage(settings.optuna_storage),
        load_if_exists=True,
        direction=direction(settings.tuning_metric),
        sampler=tpe_sampler(settings.seed),
        pruner=FoldGapPruner(),
    )


def tpe_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE that models each family's parameters together (`group`).

    Without Optuna 5's default constant liar: the liar re-reads the study from storage for
    each family's subspace and writes its proposal back, four more transactions per trial,
    to keep parallel workers from proposing the same region. Workers here each have their
    own seed already, and in the bundled-data race 15 runs without the liar evaluated 15% more
    trials and reached RandomizedSearchCV's best sooner (median ratio 0.48 against 0.58).
    """
    with warnings.catch_warnings():  # multivariate/group TPE is "experimental" since 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            n_startup_trials=STARTUP_TRIALS,
            constant_liar=False,
        )


def enqueue_defaults(study: optuna.Study, families: list[str], log_target: bool = False) -> None:
    """Queue scikit-learn's defaults for the cheap families (the table's `cheap_defaults`)
    as the study's first trials, in the table's order.

    Library defaults are a strong start on most tables and take seconds: the pruner gets a
    bar and TPE a good region before any expensive random draw. A resumed study already has
    them (`skip_if_exists`). A regressor's default learns the target as it is.
    """
    plain_target = {LOG_TARGET: False} if log_target else {}
    for entry in all_families().values():
        if entry.cheap_defaults is not None and entry.name in families:
            study.enqueue_trial(
                {"family": entry.name, **entry.cheap_defaults, **plain_target},
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
        scale_numeric: bool,
    ) -> "PreparedFold":
        """Fit the preprocessor on the fold's training rows only; transform both sides."""
        preprocess = build_preprocessor(feature_types, scale_numeric)
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
        tracking: TrialTracker | None,
    ) -> None:
        self.settings = settings
        self.tracking = tracking
        regression = settings.task == REGRESSION
        self.log_target = log_target_allowed(settings, split.y_train)
        # Classes keep their shares in every fold; a number has no classes to stratify.
        splitter = KFold if regression else StratifiedKFold
        folds = splitter(settings.cv_folds, shuffle=True, random_state=settings.seed)
        indices = list(folds.split(split.X_train, split.y_train))
        # The folds prepared once for each preprocessing the configured families ask for
        # (`scale_numeric` in their table entries).
        self.folds: dict[bool, list[PreparedFold]] = {
            scale: [
                PreparedFold.fit(feature_types, split.X_train, split.y_train, train, valid, scale)
                for train, valid in indices
            ]
            for scale in {family(name).scale_numeric for name in settings.families}
        }
        # Binary targets with a decision metric get a threshold chosen on out-of-fold rows.
        binary = not regression and split.y_train.nunique() == 2
        self.decision = settings.decision if binary else None
        # Parallel trials run in forked workers with one OpenMP thread each (the boosted
        # trees). GNU OpenMP is not fork-safe: a child that asks for a team of two after its
        # parent has run one hangs for good, while a team of one runs. One thread per worker
        # is also the share joblib gives its workers when there are as many jobs as cores (two
        # machine-wide teams on 2 cores made concurrent boosted fits take 2.4 s, not 1.6 s).
        self.omp_threads = None if settings.n_jobs == 1 else 1

    def __call__(self, trial: optuna.Trial) -> float:
        with threadpool_limits(self.omp_threads, user_api="openmp"):
            return self._cross_validate(trial)

    def _cross_validate(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, list(self.settings.families), self.log_target)
        folds = self.folds[family(params["family"]).scale_numeric]
        started = time.perf_counter()
        fold_scores: list[float] = []
        oof = OutOfFold(self.decision, self.settings.tuning_metric)
        state = "FAILED"
        try:
            for step, fold in enumerate(folds):
                model = build_estimator(params, self.settings.seed)
                model.fit(fold.X_train, fold.y_train)
                if self.decision is None:
                    fold_score = score(
                        self.settings.tuning_metric, model, fold.X_valid, fold.y_valid
                    )
                else:
                    fold_score = oof.add(model, fold)
                fold_scores.append(fold_score)
                trial.report(fold_scores[-1], step)  # the pruner takes the running mean
                # After the last fold there is nothing left to save: no pruning check
                # (each one reads the study's trials from storage).
                if step < len(folds) - 1 and trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned(f"pruned after fold {step + 1}")
            if self.decision is not None:
                fold_scores = oof.rescored()
                trial.set_user_attr(THRESHOLD_ATTR, oof.threshold)
            state = "COMPLETE"
            return float(np.mean(fold_scores))
        finally:
            # The study's storage has the fold scores (intermediate values) and the duration
            # (the trial's start and end): nothing more to write there, one transaction each.
            if self.tracking is not None:
                self.tracking.log_trial(
                    trial.number,
                    trial.study.study_name,
                    params if oof.threshold is None else {**params, THRESHOLD_ATTR: oof.threshold},
                    fold_scores,
                    state,
                    time.perf_counter() - started,
                )


class OutOfFold:
    """One trial's out-of-fold probabilities, and the decision threshold they choose.

    Each fold is scored at the threshold chosen on the folds so far (what the pruner compares
    after each fold); when all are in, `rescored` scores every fold at the final threshold,
    the one the refit model keeps. Choosing one number on the same rows it is scored on
    flatters the CV score slightly, alike for every trial; the holdout, which it never sees,
    is what the promotion gate and `holdout_*` report.
    """

    def __init__(self, decision: str | None, metric: str) -> None:
        self.decision = decision
        self.metric = metric
        self.folds: list[tuple[Any, np.ndarray, np.ndarray]] = []  # (y, proba, classes)
        self.threshold: float | None = None

    def add(self, model: Any, fold: PreparedFold) -> float:
        """Take a fitted fold model's validation probabilities; that fold's score."""
        classes = np.asarray(model.classes_)  # their own dtype: metrics refuse object labels
        self.folds.append((fold.y_valid, model.predict_proba(fold.X_valid), classes))
        truth = np.concatenate([np.asarray(y) == labels[1] for y, _, labels in self.folds])
        scores = np.concatenate([proba[:, 1] for _, proba, _ in self.folds])
        self.threshold = choose_threshold(truth, scores, str(self.decision))
        return self._score(*self.folds[-1])

    def rescored(self) -> list[float]:
        """Every fold's score at the final threshold."""
        return [self._score(*fold) for fold in self.folds]

    def _score(self, y: Any, proba: np.ndarray, classes: np.ndarray) -> float:
        predicted = decide(proba, classes, self.threshold)
        return prediction_metrics(y, predicted, proba, list(classes), (self.metric,))[self.metric]


CATCH = (ValueError, ArithmeticError)  # one bad configuration fails its trial, not the study


def tune(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    split: Split,
    feature_types: dict[str, FeatureType],
    settings: Settings,
    study_name: str,
    tracker: TrialTracker | None,
    callbacks: list[TrialCallback] | None = None,
) -> TuningResult:
    """Run `settings.trials` trials (or until the timeout) and return the best; closes the
    tracker whatever happens."""
    quiet_terminations("optuna")  # a trial stopped by SIGTERM is logged without a traceback
    try:
        study = create_study(settings, study_name)
        enqueue_defaults(
            study, list(settings.families), log_target_allowed(settings, split.y_train)
        )
        objective = Objective(split, feature_types, settings, tracker)
        # One BLAS thread for the whole study: this model space's matrix products are too
        # small to gain from more, and OpenBLAS's idle threads spin on the cores that other
        # trials need (30 sequential trials: 11.7 -> 7.2 s CPU). The limit is process-wide in
        # OpenBLAS, so it is set once here, and forked workers inherit it.
        with threadpool_limits(1, user_api="blas"):
            if settings.n_jobs == 1:
                optimize_interruptibly(
                    study,
                    objective,
                    n_trials=settings.trials,
                    timeout=settings.timeout_s,
                    callbacks=callbacks or [],
                )
            else:
                optimize_in_processes(study, objective, settings, callbacks or [])
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
        threshold=best.user_attrs.get(THRESHOLD_ATTR),
    )


def optimize_in_processes(
    study: optuna.Study, objective: Objective, settings: Settings, callbacks: list[TrialCallback]
) -> None:
    """`settings.n_jobs` forked workers share the study through its storage; the callbacks
    run here, as each worker reports a finished trial.

    Workers claim trials from a shared count, so exactly `settings.trials` run, and start no
    trial after the timeout (a running one finishes, as with Optuna's own timeout). The first
    worker error stops the others and is raised here.
    """
    deadline = None if settings.timeout_s is None else time.monotonic() + settings.timeout_s
    unclaimed = FORK.Value("i", settings.trials)
    finished = FORK.Queue()
    workers = [
        FORK.Process(
            target=_trial_worker,
            args=(study.study_name, objective, settings.seed + index, unclaimed, deadline),
            kwargs={"finished": finished, "parent_pid": os.getpid()},
            name=f"trial-worker-{index}",
            daemon=True,
        )
        for index in range(settings.n_jobs)
    ]
    for worker in workers:
        start(worker)
    try:
        running = len(workers)
        while running:
            try:
                trial, error = next_message(finished, workers)
            except ChildProcessError as died:  # killed, with nothing said
                error = str(died)
            if error is not None:
                raise RuntimeError(f"study {study.study_name!r}: trial worker failed: {error}")
            if trial is None:  # that worker is done
                running -= 1
                continue
            for callback in callbacks:
                callback(study, trial)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # only after an error or an interrupt
        join_reading(workers, finished)


def _trial_worker(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    study_name: str,
    objective: Objective,
    seed: int,
    unclaimed: Any,
    deadline: float | None,
    finished: Any,
    parent_pid: int,
) -> None:
    """One worker process: claim a trial, run it, report it; until none is left or time is up.
    A SIGTERM (from the parent's `terminate()`, or the kernel when the parent died) fails the
    running trial in the study and ends the worker quietly."""
    try:
        die_with_parent(parent_pid)
        # Its own storage connections (the parent's do not survive a fork) and its own sampler
        # seed: two workers with one seed would propose the same configurations.
        study = optuna.load_study(
            study_name=study_name,
            storage=study_storage(objective.settings.optuna_storage),
            sampler=tpe_sampler(seed),
            pruner=FoldGapPruner(),
        )
        while (deadline is None or time.monotonic() < deadline) and _claim(unclaimed):
            optimize_interruptibly(
                study,
                objective,
                n_trials=1,
                # The finished trial itself: reading it back here would cost the tuning
                # process a storage query per trial, on the cores the workers need.
                callbacks=[lambda _study, trial: finished.put((trial, None))],
            )
        finished.put((None, None))
    except Terminated:
        finished.put((None, f"{FORK.current_process().name}: terminated by SIGTERM"))
        raise SystemExit(EXIT_CODE) from None
    except BaseException as error:  # the parent raises it; the traceback goes to stderr
        name = FORK.current_process().name
        finished.put((None, f"{name}: {''.join(traceback.format_exception_only(error)).strip()}"))
        raise


def optimize_interruptibly(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], **options: Any
) -> None:
    """`study.optimize` (with `CATCH`) taking SIGTERM only inside the objective, in the main
    process and in each worker alike. Optuna records a trial its objective leaves by an
    exception as FAIL; one interrupted in `ask` (the trial created, the sampler proposing) or
    in `tell` (its state being written) would stay RUNNING for good. A SIGTERM that came
    between trials is raised at the next objective, or as the study ends."""

    def run(trial: optuna.Trial) -> float:
        with sigterm_allowed():
            return objective(trial)

    with sigterm_deferred():
        study.optimize(run, catch=CATCH, **options)


def _claim(unclaimed: Any) -> bool:
    with unclaimed.get_lock():
        if unclaimed.value <= 0:
            return False
        unclaimed.value -= 1
        return True


def study_figures(study_name: str, settings: Settings) -> dict[str, Any]:
    """Optimization history and parameter importance as matplotlib figures (no plotly)."""
    study = optuna.load_study(study_name=study_name, storage=study_storage(settings.optuna_storage))
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
