"""What the Optuna storage costs per trial: our SQLite storage (WAL, write lock up front),
Optuna's plain RDBStorage on the same kind of file, and `JournalStorage(JournalFileBackend)`.

    .venv/bin/python benchmarks/study_storage.py            # make bench-storage
    .venv/bin/python benchmarks/study_storage.py --quick    # a smoke run (seconds)

The objective is the product's search space and pruner protocol with the model fit taken out:
each trial samples a family and its parameters from the study's TPE sampler (as `ml.tuning`
builds it), reports five fold scores and asks the pruner after each, so what is left is the
storage and the sampler's reads of it. Each storage runs the same seeded study sequentially
and with two forked worker processes sharing it (as `--n-jobs 2` does), in interleaved rounds
in fresh files; the table gives the median milliseconds per trial and the spread of rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from rich.console import Console
from rich.table import Table

from ml.families import FAMILIES
from ml.storage import study_storage
from ml.tuning import FoldGapPruner, tpe_sampler

FOLDS = 5
StorageFactory = Callable[[Path], optuna.storages.BaseStorage]

STORAGES: dict[str, StorageFactory] = {
    "ours: SQLite, WAL, write lock up front": lambda d: study_storage(f"sqlite:///{d}/o.db"),
    "Optuna RDBStorage, SQLite": lambda d: optuna.storages.RDBStorage(f"sqlite:///{d}/r.db"),
    "JournalStorage(JournalFileBackend)": lambda d: optuna.storages.JournalStorage(
        JournalFileBackend(str(d / "optuna.journal"))
    ),
}


def objective(trial: optuna.Trial) -> float:
    """A trial of the product's space without the fit: sampling, fold reports, prune checks."""
    family = trial.suggest_categorical("family", sorted(FAMILIES))
    params = FAMILIES[family].search_space(trial)
    score = sum(hash((name, str(value))) % 1000 for name, value in params.items()) / 1e6
    for fold in range(FOLDS):
        trial.report(0.9 + score + fold / 1e4, fold)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return 0.9 + score


def run_study(factory: StorageFactory, directory: Path, trials: int, seed: int) -> None:
    study = optuna.load_study(
        study_name="bench",
        storage=factory(directory),
        sampler=tpe_sampler(seed),
        pruner=FoldGapPruner(),
    )
    study.optimize(objective, n_trials=trials)


def ms_per_trial(factory: StorageFactory, trials: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        optuna.create_study(study_name="bench", storage=factory(directory), direction="maximize")
        started = time.perf_counter()
        if workers == 1:
            run_study(factory, directory, trials, seed=42)
        else:
            # Each forked worker opens its own storage: a JournalStorage object carries the id
            # its process writes trials under, so one inherited across a fork makes two workers
            # write each other's trials ("Cannot tell a PRUNED trial"); an RDB engine's pooled
            # connections must not cross a fork either.
            context = multiprocessing.get_context("fork")
            processes = [
                context.Process(
                    target=run_study, args=(factory, directory, trials // workers, 42 + i)
                )
                for i in range(workers)
            ]
            for process in processes:
                process.start()
            for process in processes:
                process.join()
                if process.exitcode != 0:
                    raise RuntimeError(f"a worker failed (exit {process.exitcode})")
        return (time.perf_counter() - started) * 1000 / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per study")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="20 trials, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.rounds = 20, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for workers in (1, 2):
            for name, factory in STORAGES.items():
                key = (name, workers)
                results.setdefault(key, []).append(ms_per_trial(factory, args.trials, workers))
    table = Table(title=f"Optuna storage: ms per trial, {args.trials} trials, {args.rounds} rounds")
    for column in ("storage", "workers", "median ms/trial", "rounds (min-max)", "vs ours"):
        table.add_column(column)
    for (name, workers), values in results.items():
        ours = statistics.median(results[(next(iter(STORAGES)), workers)])
        median = statistics.median(values)
        table.add_row(
            name,
            str(workers),
            f"{median:.1f}",
            f"{min(values):.1f}-{max(values):.1f}",
            f"{median / ours:.2f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
