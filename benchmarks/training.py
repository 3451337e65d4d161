"""Optuna (TPE + fold-gap pruning, 2 jobs) vs scikit-learn's RandomizedSearchCV, same model
space, same folds, same wall-clock budget; plus the cost of MLflow tracking per study.

    .venv/bin/python benchmarks/training.py            # make bench-training
    .venv/bin/python benchmarks/training.py --short    # make bench-training-short (~15 min)
    .venv/bin/python benchmarks/training.py --quick    # a smoke run (seconds)

Prints, per dataset and seed (folds, sampler and candidates follow the seed; 9 seeds on the
bundled data and 3 on the 50,000 rows by default): best CV score of each searcher, when each
reached it, when Optuna reached RandomizedSearchCV's best, and the ratio; the verdict is the
median ratio, since one seed is one draw of two random searches. Then tracking on/off for one
fixed study, repeated with alternating order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from scipy.stats import loguniform, randint
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from ml.config import Settings
from ml.data import Dataset, load_dataset, split, validate
from ml.features import build_preprocessor
from ml.storage import study_storage
from ml.tracking import TrialTracker
from ml.tuning import tune

console = Console(width=None if sys.stdout.isatty() else 120)  # a log file: no 80-column cut
CHUNK_S = 4.0  # seconds of candidates per RandomizedSearchCV call (run_random_search)


@dataclass
class SearchTrace:
    """Best-so-far score over elapsed seconds."""

    name: str
    points: list[tuple[float, float]]  # (elapsed_s, best_so_far)
    evaluated: int

    @property
    def best(self) -> float:
        return self.points[-1][1] if self.points else float("nan")

    def time_to_reach(self, score: float) -> float | None:
        for elapsed, best in self.points:
            if best >= score - 1e-12:
                return elapsed
        return None


CLASS_WEIGHTS = [None, "balanced"]


class LogInt:  # pylint: disable=too-few-public-methods
    """An integer drawn log-uniformly from [low, high], as Optuna's `suggest_int(log=True)`
    draws it (the log of [low - 0.5, high + 0.5], rounded); scipy has no such distribution."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.widened = loguniform(low - 0.5, high + 0.5)

    def rvs(self, random_state: Any = None) -> int:
        drawn = round(float(self.widened.rvs(random_state=random_state)))
        return min(max(drawn, self.low), self.high)


def random_search_space(seed: int) -> list[dict]:
    """Our classification families' space (ml/families.py) as RandomizedSearchCV sub-spaces
    (tests/unit/test_bench_training.py keeps the two the same)."""
    return [
        {
            "model": [LogisticRegression(max_iter=2000, random_state=seed)],
            "model__C": loguniform(1e-3, 1e2),
            "model__class_weight": CLASS_WEIGHTS,
        },
        {
            "model": [RandomForestClassifier(n_jobs=1, random_state=seed)],
            "model__n_estimators": list(range(50, 301, 25)),
            "model__max_depth": randint(2, 21),
            "model__min_samples_leaf": randint(1, 11),
            "model__max_features": ["sqrt", "log2"],
            "model__class_weight": CLASS_WEIGHTS,
        },
        {
            "model": [HistGradientBoostingClassifier(early_stopping=False, random_state=seed)],
            "model__learning_rate": loguniform(0.01, 0.3),
            "model__max_iter": list(range(50, 601, 25)),
            "model__max_leaf_nodes": LogInt(4, 63),
            "model__min_samples_leaf": LogInt(2, 128),
            "model__l2_regularization": loguniform(1e-6, 10.0),
            "model__class_weight": CLASS_WEIGHTS,
        },
    ]


def finished_at(_estimator, _features, _labels) -> float:
    """A second "scorer" for RandomizedSearchCV: the wall clock when a fold's scoring ran,
    so each candidate's finishing time can be read back from `cv_results_`."""
    return time.time()


def run_random_search(dataset: Dataset, settings: Settings, budget_s: float) -> SearchTrace:
    """Searches of a few seconds each (`CHUNK_S`), one random stream drawing every candidate,
    until the budget is spent; only candidates finished within it count.

    Each candidate is stamped when its last fold was scored (`finished_at`), so the searches
    can be long: one `fit` per two candidates, as before, cost RandomizedSearchCV a fifth of
    its time in start-up and a barrier per call (60 bundled candidates: 8.9 s in pairs, 7.3 s
    in one search). One stream, not one seed per search: seeding search b with seed + b would
    make seed 43's candidates seed 42's shifted by one search, not an independent draw."""
    candidates = np.random.RandomState(settings.seed)
    data_split = split(dataset, settings.test_size, settings.seed)
    folds = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
    estimator = Pipeline(
        [("preprocess", build_preprocessor(dataset.feature_types)), ("model", LogisticRegression())]
    )
    started = time.time()
    finished: list[tuple[float, float]] = []  # (elapsed_s, mean CV score) per candidate
    n_iter, searches = settings.n_jobs, 0
    while time.time() - started < budget_s:
        searches += 1
        search_started = time.time()
        search = RandomizedSearchCV(
            estimator,
            random_search_space(settings.seed),
            n_iter=n_iter,
            scoring={"roc_auc": "roc_auc", "finished_at": finished_at},
            cv=folds,
            n_jobs=settings.n_jobs,
            random_state=candidates,
            refit=False,
        )
        search.fit(data_split.X_train, data_split.y_train)
        finished += _finishing_times(search.cv_results_, folds.n_splits, started)
        # Next search: about CHUNK_S of candidates at this one's pace, whole rounds of n_jobs,
        # at most 32 rounds: a search of cheap draws must not make the next one, of forests,
        # run far past the budget (what ends after it is discarded).
        per_candidate = (time.time() - search_started) / n_iter
        rounds = max(1, round(CHUNK_S / per_candidate / settings.n_jobs))
        n_iter = settings.n_jobs * min(rounds, 32)
    in_budget = sorted((at, value) for at, value in finished if at <= budget_s)
    points = list(zip([at for at, _ in in_budget], np.fmax.accumulate([v for _, v in in_budget])))
    return SearchTrace(f"RandomizedSearchCV ({searches} searches)", points, len(in_budget))


def _finishing_times(results: dict, folds: int, started: float) -> list[tuple[float, float]]:
    """(seconds since `started`, mean CV score) of each candidate: done at its last fold."""
    stamps = np.max([results[f"split{k}_test_finished_at"] for k in range(folds)], axis=0)
    return list(zip(stamps - started, results["mean_test_roc_auc"]))


def run_optuna(dataset: Dataset, settings: Settings, budget_s: float, study: str) -> SearchTrace:
    """Our ml.tuning.tune with tracking on, recording best-so-far as trials finish; as for
    RandomizedSearchCV, only trials finished within the budget count."""
    data_split = split(dataset, settings.test_size, settings.seed)
    started, points, evaluated, best = time.perf_counter(), [], 0, -np.inf

    def record(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # The best so far from the trials themselves: asking the study costs a storage
        # query per trial, on the cores the trials run on, that RandomizedSearchCV never pays.
        nonlocal evaluated, best
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            return  # a trial that started in time and ended after it
        evaluated += 1
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            best = max(best, trial.value)
            points.append((elapsed, best))

    tracker = _tracker(settings)
    tuned = settings.model_copy(update={"trials": 100_000, "timeout_s": budget_s})
    result = tune(data_split, dataset.feature_types, tuned, study, tracker, [record])
    return SearchTrace(f"Optuna TPE+pruning ({result.pruned} pruned)", points, evaluated)


def _tracker(settings: Settings) -> TrialTracker:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(
        client.create_experiment("bench", settings.artifact_root.as_uri())
    )
    parent = client.create_run(experiment.experiment_id, run_name="bench-parent")
    return TrialTracker(client, experiment.experiment_id, parent.info.run_id, "roc_auc")


@dataclass
class Race:
    """One seed's race on one dataset: Optuna's time to RandomizedSearchCV's best over
    RandomizedSearchCV's own time to it (None: Optuna never got there)."""

    seed: int
    random_search: SearchTrace
    optuna: SearchTrace

    @property
    def ratio(self) -> float | None:
        target = self.random_search.best
        t_random = self.random_search.time_to_reach(target)
        t_optuna = self.optuna.time_to_reach(target)
        if t_optuna is None or not t_random:
            return None
        return t_optuna / t_random


def compare(
    name: str, dataset: Dataset, settings: Settings, budget_s: float, seeds: int
) -> list[str]:
    """The race once per seed (folds, sampler, candidates all follow it): one seed is one
    draw of two random processes, so the verdict is the median ratio."""
    console.print(
        f"[bold]{name}[/]: {dataset.report.rows} rows, budget {budget_s:.0f}s per searcher, "
        f"{seeds} seed(s)"
    )
    table = Table(
        "seed",
        "searcher",
        "evaluated",
        "best CV roc_auc",
        "time to own best (s)",
        "time to RSCV best (s)",
        title=f"{name}: same space, folds, budget, 2 jobs",
    )
    races = []
    for seed in range(settings.seed, settings.seed + seeds):
        seeded = settings.model_copy(update={"seed": seed})
        race = Race(
            seed,
            run_random_search(dataset, seeded, budget_s),
            run_optuna(dataset, seeded, budget_s, f"bench-{name}-{seed}"),
        )
        races.append(race)
        for trace in (race.random_search, race.optuna):
            own = trace.time_to_reach(trace.best)
            reach = trace.time_to_reach(race.random_search.best)
            table.add_row(
                str(seed),
                trace.name,
                str(trace.evaluated),
                f"{trace.best:.5f}",
                f"{own:.1f}" if own is not None else "-",
                f"{reach:.1f}" if reach is not None else "not reached",
            )
    console.print(table)
    ratios = [float("inf") if race.ratio is None else race.ratio for race in races]
    shown = ", ".join(_ratio(ratio) for ratio in ratios)
    ranked = sorted(ratios)
    verdict = _ratio(statistics.median(ranked))
    console.print(
        f"Optuna time to RandomizedSearchCV's best / RandomizedSearchCV's time: {shown}; "
        f"median [bold]{verdict}[/] (target <= 0.5)"
    )
    if len(ranked) >= 4:  # how far one draw of the races moves the verdict
        # Order statistics, not interpolated quantiles: no arithmetic on "not reached" (inf).
        low, high = ranked[len(ranked) // 4], ranked[-1 - len(ranked) // 4]
        console.print(
            f"sorted: {', '.join(_ratio(r) for r in ranked)}; quartiles {_ratio(low)} - "
            f"{_ratio(high)}"
        )
    console.print()
    return [
        name,
        " / ".join(f"{race.random_search.best:.5f}" for race in races),
        " / ".join(f"{race.optuna.best:.5f}" for race in races),
        shown,
        verdict,
    ]


def _ratio(value: float) -> str:
    """A time ratio as printed; inf is a race Optuna never reached RandomizedSearchCV's best in."""
    return "not reached" if value == float("inf") else f"{value:.2f}"


def tracking_overhead(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    name: str, dataset: Dataset, settings: Settings, trials: int, repeats: int, min_side_s: float
) -> None:
    """The same seeded sequential study with and without MLflow trial runs.

    MLflow's client spends a roughly fixed CPU time per trial run, so its share depends on
    how long trials take: it runs on two datasets, the bundled one (trials of a few hundred
    milliseconds) and a synthetic one with trials of a second or more.

    Each study gets a fresh Optuna storage file, and the order alternates (off-on, on-off,
    ...): studies accumulating in one storage slow down one after the other, and with a fixed
    order that drift would be billed to tracking. It runs at least `repeats` pairs, and more
    (in pairs of pairs, so each order comes up as often) until each side has `min_side_s` of
    studies: a few 7 s studies a side left a spread wider than the 5% target."""
    data_split = split(dataset, settings.test_size, settings.seed)
    fixed = settings.model_copy(update={"trials": trials, "timeout_s": None, "n_jobs": 1})
    wall: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    writer_cpu: list[float] = []  # the writer process's own CPU per "on" study
    tune(data_split, dataset.feature_types, fixed, f"{name}-warm-up", None)  # imports, caches
    _tracker(settings).close()  # the first client creates MLflow's tables: not per-trial cost
    repeat = 0
    while repeat < repeats or min(map(sum, wall.values())) < min_side_s or repeat % 2:
        for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
            study = f"{name}-{mode}-{repeat}"
            storage = f"sqlite:///{settings.var_dir / f'{study}.db'}"
            alone = fixed.model_copy(update={"optuna_storage": storage})
            started, started_cpu = time.perf_counter(), time.process_time()
            # The clock includes starting the writer process and the parent run: tracking's.
            tracker = _tracker(settings) if mode == "on" else None
            tune(data_split, dataset.feature_types, alone, study, tracker)
            wall[mode].append(time.perf_counter() - started)
            # CPU of this process and of the writer process: what tracking costs in all,
            # even where another core absorbs it.
            cpu[mode].append(time.process_time() - started_cpu)
            if tracker is not None:
                writer_cpu.append(tracker.write_cpu_s)
                cpu[mode][-1] += tracker.write_cpu_s
        repeat += 1
    table = Table(
        "tracking",
        "median wall (s)",
        "median CPU (s)",
        "wall runs",
        title=f"MLflow tracking cost on {name}: {trials} trials, sequential, local SQLite store",
    )
    for mode in ("off", "on"):
        runs = ", ".join(f"{value:.2f}" for value in wall[mode])
        table.add_row(
            mode,
            f"{statistics.median(wall[mode]):.2f}",
            f"{statistics.median(cpu[mode]):.2f}",
            runs,
        )
    console.print(table)
    for label, samples in (("wall", wall), ("CPU", cpu)):
        off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
        console.print(
            f"tracking overhead ({label}): [bold]{(on - off) / off:+.1%}[/] "
            f"({(on - off) / trials * 1000:.0f} ms per trial; target <= 5%)"
        )
    # The same seeded study's wall time varies from run to run; a difference inside that
    # spread is not tracking's.
    spread = (max(wall["off"]) - min(wall["off"])) / statistics.median(wall["off"])
    console.print(f"untracked runs' wall spread (max - min) / median: {spread:.1%}")
    # The direct cost, free of run-to-run noise: CPU inside the three MLflow calls per trial.
    direct = statistics.median(writer_cpu)
    console.print(
        f"tracking writer process CPU: {direct / trials * 1000:.0f} ms per trial, "
        f"{direct / statistics.median(cpu['off']):.1%} of the untracked study's CPU"
    )


def synthetic(rows: int) -> Dataset:
    """A `make_classification` table: 20 numeric features, 8 informative, some class overlap."""
    features, labels = make_classification(
        n_samples=rows, n_features=20, n_informative=8, class_sep=0.8, random_state=0
    )
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(20)])
    frame["y"] = labels
    return validate(frame, "y", source=f"make_classification({rows})")


def warm_up(dataset: Dataset, settings: Settings) -> None:
    """Pay the one-time start-up costs before any clock starts, for both searchers: MLflow
    and Optuna creating their tables in fresh files (about 3 s and 0.5-1 s), and joblib
    starting RandomizedSearchCV's worker processes, which import scikit-learn (about 4 s;
    joblib reuses them for every later search). Without this the first seed measured
    start-up, not search."""
    _tracker(settings).close()
    study_storage(settings.optuna_storage).engine.dispose()
    data_split = split(dataset, settings.test_size, settings.seed)
    estimator = Pipeline(
        [
            ("preprocess", build_preprocessor(dataset.feature_types)),
            ("model", LogisticRegression(max_iter=2000)),
        ]
    )
    RandomizedSearchCV(
        estimator, {"model__C": loguniform(1e-3, 1e2)}, n_iter=2, cv=2, n_jobs=settings.n_jobs
    ).fit(data_split.X_train, data_split.y_train)


def races(demo: Dataset, large: Dataset, settings: Settings, args: argparse.Namespace) -> None:
    """Race both searchers on the bundled data and the large synthetic set; print a summary."""
    warm_up(demo, settings)
    summary = Table(
        "dataset",
        "RSCV best per seed",
        "Optuna best per seed",
        "time ratio per seed",
        "median ratio (<= 0.5)",
        title="Summary",
    )
    summary.add_row(*compare("demo", demo, settings, args.budget, args.seeds))
    summary.add_row(
        *compare(f"synthetic-{args.rows}", large, settings, args.large_budget, args.large_seeds)
    )
    console.print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per searcher (demo)")
    parser.add_argument(
        "--large-budget", type=float, default=180.0, help="seconds per searcher (50,000 rows)"
    )
    parser.add_argument("--rows", type=int, default=50_000)
    # One bundled race is one draw of two random searches: three gave medians from 0.29 to
    # 0.65 on the same code (docs/training.md). Nine cost 18 minutes; a 50,000-row race costs
    # 6, so that one keeps three.
    parser.add_argument("--seeds", type=int, default=9, help="races on the bundled data")
    parser.add_argument("--large-seeds", type=int, default=3, help="races on the large set")
    parser.add_argument("--overhead-trials", type=int, default=30)
    parser.add_argument(
        "--overhead-rows", type=int, default=5_000, help="the second tracking-cost dataset"
    )
    parser.add_argument("--repeats", type=int, default=4, help="tracking on/off pairs, at least")
    parser.add_argument(
        "--min-side-s", type=float, default=60.0, help="tracking: seconds of studies per side"
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="same races and budgets, fewer seeds and repeats (~15 min): before/after checks",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the tracking on/off comparison"
    )
    args = parser.parse_args()
    if args.short:
        # Same budgets and datasets, so each race is comparable with a full run's; fewer draws,
        # so a median moves more: compare two short runs of one sitting, not a short with a full.
        args.seeds, args.large_seeds, args.repeats, args.min_side_s = 3, 1, 2, 30.0
    if args.quick:
        args.budget, args.large_budget, args.rows = 4.0, 4.0, 2_000
        args.overhead_trials, args.repeats, args.overhead_rows = 3, 1, 1_000
        args.seeds, args.large_seeds, args.min_side_s = 1, 1, 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(var_dir=Path(tmp), n_jobs=2, seed=42)
        demo = load_dataset("demo", None)
        if not args.overhead_only:
            races(demo, synthetic(args.rows), settings, args)
        for name, dataset in (
            ("demo", demo),
            (f"synthetic-{args.overhead_rows}", synthetic(args.overhead_rows)),
        ):
            tracking_overhead(
                name, dataset, settings, args.overhead_trials, args.repeats, args.min_side_s
            )


if __name__ == "__main__":
    main()
