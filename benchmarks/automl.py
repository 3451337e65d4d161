"""Our tuning against FLAML's AutoML at an equal wall budget (issue 23): `make bench-automl`.

    .venv/bin/python benchmarks/automl.py                       # 4 datasets x 3 seeds, 60 s
    .venv/bin/python benchmarks/automl.py --budget 10 --seeds 1 --datasets breast_cancer

Three contenders per dataset and seed, each given the same training rows, the same folds, the
same metric and `--budget` seconds of search on one core:

- ours: the product's tuning entry point (`ml.tuning.tune`, Optuna over our families with the
  settings a user gets, the timeout as the budget) and the chosen model refit on the training
  rows (`ml.training.fit_best`), in our venv;
- FLAML's `AutoML.fit` with `estimator_list` restricted to our families' counterparts, and
- FLAML unrestricted (its default list: LightGBM, XGBoost, extra trees, ...), both run by the
  FLAML venv's Python (scripts/flaml.sh, benchmarks/flaml_runner.py).

Every contender writes its predictions on the same holdout, and this process scores all of them
with one metric code (benchmarks/automl_report.py), then prints the medians over seeds and
issue 23's targets, met or missed.

Two contenders run at once, each limited to one thread (n_jobs=1, OMP/BLAS threads 1): the
machine has two cores, and 4 x 3 x 3 races of 60 s one after another would take 36 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess  # nosec B404: our venv and FLAML's run fixed scripts, no shell
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks` and `ml` from this checkout

from benchmarks.automl_report import (  # noqa: E402
    CONTENDERS,
    FLAML_ALL,
    FLAML_OURS,
    METRICS,
    OURS,
    Score,
    holdout_scores,
    medians,
    verdicts,
)
from benchmarks.decision import churn_like_frame  # noqa: E402

console = Console(width=170)
ONE_THREAD = {
    name: "1"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
}


@dataclass(frozen=True)
class BenchDataset:
    """A dataset of the race: a frame whose `target` column is what both sides predict."""

    name: str
    task: str
    target: str
    load: Callable[[], pd.DataFrame]
    about: str


def _breast_cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame


def _churn_like() -> pd.DataFrame:
    return churn_like_frame(4000, 0)


def _diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True, scaled=False).frame


def _shop_sales(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Weekly sales of a shop: a region (5), a yes/no promotion, a store format (3) as strings,
    integer and float numbers; the categories shift and scale the target, with an interaction
    and a non-linear term, so a model has to use them."""
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", "west", "centre"], rows)
    promo = rng.choice(["yes", "no"], rows, p=[0.3, 0.7])
    store = rng.choice(["kiosk", "mall", "street"], rows, p=[0.2, 0.5, 0.3])
    staff = rng.integers(1, 12, rows)
    footfall = rng.gamma(4.0, 250.0, rows)
    price = rng.normal(20.0, 4.0, rows).round(2)
    region_level = pd.Series(region).map(
        {"north": 0.0, "south": 40.0, "east": -25.0, "west": 15.0, "centre": 70.0}
    )
    store_scale = pd.Series(store).map({"kiosk": 0.6, "mall": 1.4, "street": 1.0})
    sales = (
        region_level.to_numpy()
        + store_scale.to_numpy() * (0.12 * footfall + 9.0 * np.sqrt(staff))
        + (promo == "yes") * (30.0 + 0.03 * footfall)
        - 2.5 * (price - 20.0) ** 2 / 4.0
        + rng.normal(0.0, 25.0, rows)
    )
    frame = pd.DataFrame(
        {
            "region": region,
            "promotion": promo,
            "store": store,
            "staff": staff,
            "footfall": footfall.round(1),
            "price": price,
            "sales": sales.round(2),
        }
    )
    frame.loc[::23, "footfall"] = np.nan  # a gap, as real exports have
    return frame


DATASETS = (
    BenchDataset(
        "breast_cancer", "classification", "target", _breast_cancer, "sklearn, 569 x 30 numeric"
    ),
    BenchDataset(
        "churn_like",
        "classification",
        "churned",
        _churn_like,
        "generated, 4,000 rows, 14% positives, a 4-level plan and yes/no (benchmarks/decision.py)",
    ),
    BenchDataset("diabetes", "regression", "target", _diabetes, "sklearn, 442 x 10 numeric"),
    BenchDataset(
        "shop_sales",
        "regression",
        "sales",
        _shop_sales,
        "generated, 3,000 rows, region/promotion/store strings, ints and floats",
    ),
)


def regression_supported() -> bool:
    """Whether our chain has a regression task yet (issue 23's reg23 work adds `task`)."""
    from ml.config import Settings  # pylint: disable=import-outside-toplevel

    return "task" in Settings.model_fields


# --- one contender (each runs as its own process) ----------------------------------------


def run_ours(args: argparse.Namespace) -> None:
    """Our side in our venv: tune on the training file for the budget, refit the best on it,
    write the holdout predictions (the product's model, decision threshold included)."""
    # pylint: disable=import-outside-toplevel
    from ml.config import Settings
    from ml.data import Split, coerce_features, validate
    from ml.training import fit_best
    from ml.tuning import tune

    train = pd.read_parquet(args.train)
    test = pd.read_parquet(args.test)
    settings_fields: dict[str, object] = {}
    if args.task == "regression":
        settings_fields["task"] = "regression"
    with tempfile.TemporaryDirectory(prefix="bench-automl-ours-") as work:
        settings = Settings(
            var_dir=Path(work),
            trials=1_000_000,  # the budget ends the study, as FLAML's time_budget does
            timeout_s=args.budget,
            n_jobs=1,
            seed=args.seed,
            **settings_fields,  # type: ignore[arg-type]
        )
        if hasattr(settings, "for_task"):
            settings = settings.for_task(args.task)
        dataset = validate(
            train,
            args.target,
            source=str(args.train),
            cv_folds=settings.cv_folds,
            **settings_fields,  # type: ignore[arg-type]
        )
        features = list(dataset.feature_types)
        holdout = coerce_features(test[features], dataset.feature_types)
        data_split = Split(dataset.X, holdout, dataset.y, test[args.target])
        started = time.perf_counter()
        tuning = tune(data_split, dataset.feature_types, settings, "bench-automl", None)
        model = fit_best(tuning.best_params, dataset, data_split, settings.seed, tuning.threshold)
        fit_s = time.perf_counter() - started
    predictions = pd.DataFrame({"prediction": model.predict(holdout)})
    if args.task == "classification":
        classes = list(model.classes_)
        predictions["proba"] = model.predict_proba(holdout)[:, classes.index(max(classes))]
    predictions.to_parquet(args.out)
    summary = {
        "fit_s": fit_s,
        "best": tuning.best_params["family"],
        "config": {key: str(value) for key, value in tuning.best_params.items()},
        "trials": tuning.complete + tuning.pruned,
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary))


# --- the race -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One contender on one dataset and seed."""

    dataset: BenchDataset
    seed: int
    contender: str
    work: Path

    @property
    def out(self) -> Path:
        slug = self.contender.split()[0] + ("-all" if self.contender == FLAML_ALL else "")
        return self.work / f"{self.dataset.name}-{self.seed}-{slug}.parquet"


def write_split(dataset: BenchDataset, seed: int, work: Path) -> tuple[Path, Path]:
    """The seed's 80/20 split (stratified for classification) as Parquet, read by every side."""
    frame = dataset.load()
    stratify = frame[dataset.target] if dataset.task == "classification" else None
    train, test = train_test_split(frame, test_size=0.2, random_state=seed, stratify=stratify)
    paths = (
        work / f"{dataset.name}-{seed}-train.parquet",
        work / f"{dataset.name}-{seed}-test.parquet",
    )
    train.reset_index(drop=True).to_parquet(paths[0])
    test.reset_index(drop=True).to_parquet(paths[1])
    return paths


def command(job: Job, flaml_python: Path, budget: float, folds: int) -> list[str]:
    train, test = (
        job.work / f"{job.dataset.name}-{job.seed}-{part}.parquet" for part in ("train", "test")
    )
    common = [
        "--train",
        str(train),
        "--test",
        str(test),
        "--target",
        job.dataset.target,
        "--task",
        job.dataset.task,
        "--budget",
        str(budget),
        "--seed",
        str(job.seed),
        "--out",
        str(job.out),
    ]
    if job.contender == OURS:
        return [sys.executable, str(Path(__file__).resolve()), "--side", "ours", *common]
    estimators = "ours" if job.contender == FLAML_OURS else "auto"
    metric = METRICS[job.dataset.task][0]
    return [
        str(flaml_python),
        str(REPO / "benchmarks" / "flaml_runner.py"),
        *common,
        "--metric",
        metric,
        "--folds",
        str(folds),
        "--estimators",
        estimators,
    ]


def run_job(job: Job, flaml_python: Path, budget: float, folds: int) -> tuple[Job, float]:
    """Run one contender to the end; its wall time (search, refit, prediction, start-up)."""
    started = time.perf_counter()
    done = subprocess.run(  # nosec B603: fixed scripts and our own arguments
        command(job, flaml_python, budget, folds),
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{job.contender} on {job.dataset.name} seed {job.seed} failed "
            f"(exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return job, time.perf_counter() - started


def race(
    datasets: list[BenchDataset], seeds: list[int], budget: float, parallel: int, flaml_python: Path
) -> tuple[list[Score], list[dict[str, object]]]:
    """Every contender on every dataset and seed, `parallel` at a time; their holdout scores
    and what each chose."""
    from ml.config import Settings  # pylint: disable=import-outside-toplevel

    folds = Settings().cv_folds  # the folds a user's tuning gets; FLAML is given the same
    scores: list[Score] = []
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as tmp:
        work = Path(tmp)
        jobs = []
        for dataset in datasets:
            for seed in seeds:
                write_split(dataset, seed, work)
                jobs += [Job(dataset, seed, contender, work) for contender in CONTENDERS]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(run_job, job, flaml_python, budget, folds) for job in jobs]
            for future in futures:
                job, wall_s = future.result()
                test = pd.read_parquet(work / f"{job.dataset.name}-{job.seed}-test.parquet")
                predictions = pd.read_parquet(job.out)
                values = holdout_scores(job.dataset.task, test[job.dataset.target], predictions)
                scores += [
                    Score(job.dataset.name, job.seed, job.contender, metric, value)
                    for metric, value in values.items()
                ]
                summary = json.loads(job.out.with_suffix(".json").read_text())
                runs.append(
                    {
                        "dataset": job.dataset.name,
                        "seed": job.seed,
                        "contender": job.contender,
                        "wall_s": round(wall_s, 1),
                        **summary,
                        **values,
                    }
                )
                console.print(
                    f"{job.dataset.name} seed {job.seed} {job.contender}: "
                    + ", ".join(f"{name} {value:.4f}" for name, value in values.items())
                    + f", best {summary['best']}, wall {wall_s:.0f} s",
                    highlight=False,
                )
    return scores, runs


def scores_of(runs: list[dict[str, object]]) -> list[Score]:
    """The holdout scores a run list (as `--json` writes it) holds."""
    metrics = {metric for names in METRICS.values() for metric in names}
    return [
        Score(
            str(run["dataset"]),
            int(str(run["seed"])),
            str(run["contender"]),
            name,
            float(str(value)),
        )
        for run in runs
        for name, value in run.items()
        if name in metrics
    ]


def median_of(runs: list[dict[str, object]], field: str) -> float:
    return statistics.median(float(str(run[field])) for run in runs)


def print_tables(
    scores: list[Score], runs: list[dict[str, object]], datasets: list[BenchDataset]
) -> None:
    median_scores = medians(scores)
    table = Table("dataset", "metric", *CONTENDERS, title="Holdout medians over seeds")
    for dataset in datasets:
        for metric in METRICS[dataset.task]:
            values = [
                median_scores.get((dataset.name, contender, metric)) for contender in CONTENDERS
            ]
            if any(value is not None for value in values):
                table.add_row(
                    dataset.name,
                    metric,
                    *("-" if value is None else f"{value:.4f}" for value in values),
                )
    console.print(table)
    chosen = Table(
        "dataset",
        "contender",
        "best estimator (per seed)",
        "search + refit s (median)",
        "process wall s (median)",
        title="What each chose, and its time (the wall adds start-up, loading and predicting)",
    )
    for dataset in datasets:
        for contender in CONTENDERS:
            mine = [
                run
                for run in runs
                if run["dataset"] == dataset.name and run["contender"] == contender
            ]
            if mine:
                chosen.add_row(
                    dataset.name,
                    contender,
                    ", ".join(str(run["best"]) for run in mine),
                    f"{median_of(mine, 'fit_s'):.0f}",
                    f"{median_of(mine, 'wall_s'):.0f}",
                )
    console.print(chosen)
    targets = Table(
        "dataset",
        "metric",
        "ours >= flaml (our families)",
        "ours within 0.5% of flaml (all)",
        "ours worse than flaml (all) by",
        title="Issue 23's targets (medians)",
    )
    for verdict in verdicts(median_scores, {dataset.name: dataset.task for dataset in datasets}):
        targets.add_row(
            verdict.dataset,
            verdict.metric,
            "met" if verdict.beats_restricted else "MISSED",
            "met" if verdict.near_unrestricted else "MISSED",
            f"{verdict.gap_to_unrestricted:+.2%}",
        )
    console.print(targets)


def flaml_bin() -> Path:
    found = subprocess.run(  # nosec B603
        [str(REPO / "scripts" / "flaml.sh"), "path"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        raise SystemExit(found.stderr.strip() or "no FLAML venv: run `make flaml`")
    return Path(found.stdout.strip()) / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of search each")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="contenders at once, 1 core each")
    parser.add_argument("--datasets", default=",".join(dataset.name for dataset in DATASETS))
    parser.add_argument("--json", type=Path, help="write every run's scores here")
    parser.add_argument("--from-json", type=Path, help="print the tables of a saved --json run")
    # Our side, as the race runs it in its own process:
    parser.add_argument("--side", choices=("ours",), help=argparse.SUPPRESS)
    for name in ("--train", "--test", "--out"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "ours":
        run_ours(args)
        return

    known = {dataset.name: dataset for dataset in DATASETS}
    if args.from_json:
        runs = json.loads(args.from_json.read_text())
        shown = [
            dataset for dataset in DATASETS if any(run["dataset"] == dataset.name for run in runs)
        ]
        print_tables(scores_of(runs), runs, shown)
        return
    unknown = sorted(set(args.datasets.split(",")) - set(known))
    if unknown:
        parser.error(f"--datasets: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    datasets = [known[name] for name in args.datasets.split(",")]
    if not regression_supported():
        skipped = [dataset.name for dataset in datasets if dataset.task == "regression"]
        datasets = [dataset for dataset in datasets if dataset.task != "regression"]
        if skipped:
            console.print(f"skipped {', '.join(skipped)}: our chain has no regression task yet")
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    scores, runs = race(datasets, list(range(args.seeds)), args.budget, args.parallel, flaml_bin())
    load_after = os.getloadavg()
    console.print(
        f"{started:%Y-%m-%d %H:%M} UTC, {args.budget:.0f} s budget, {args.seeds} seeds, "
        f"{args.parallel} contenders at once with one thread each, "
        f"{(time.time() - started.timestamp()) / 60:.1f} min; load average (1/5/15 min) "
        f"before {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.1f}' for x in load_after)} on {os.cpu_count()} cores "
        "(a shared machine)",
        highlight=False,
    )
    for dataset in datasets:
        console.print(f"  {dataset.name}: {dataset.task}, {dataset.about}", highlight=False)
    print_tables(scores, runs, datasets)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
