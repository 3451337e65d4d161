"""FLAML's side of `make bench-automl`, run by the FLAML venv's Python (scripts/flaml.sh), not
ours: it imports only FLAML, pandas and numpy, never the project.

    <flaml venv>/bin/python benchmarks/flaml_runner.py --train train.parquet --test test.parquet \
        --target y --task classification --metric roc_auc --budget 60 --seed 0 --folds 3 \
        --estimators rf,lrl2,histgb --out predictions.parquet

Fits `flaml.AutoML` on the training file with one core and the same folds as our tuning, then
writes its holdout predictions (the label or value, and the positive class's probability for a
binary target) and a JSON summary beside them; scoring happens in our venv
(benchmarks/automl.py), so both sides share one metric code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Our families' counterparts among FLAML 2.8's estimator names (flaml/automl/task/generic_task.py):
# a random forest, a regularised linear model (L2 logistic regression; for regression FLAML has
# no ridge, its elastic net is the nearest) and histogram gradient boosting.
# tests/contracts/test_flaml_contract.py checks that the names exist.
OUR_FAMILIES = {
    "classification": ("rf", "lrl2", "histgb"),
    "regression": ("rf", "enet", "histgb"),
}


def estimator_list(choice: str, task: str) -> list[str] | str:
    """`ours` -> our families' FLAML names for the task; `auto` -> FLAML's own default list."""
    if choice == "auto":
        return "auto"
    if choice == "ours":
        return list(OUR_FAMILIES[task])
    return choice.split(",")


def build_parser() -> argparse.ArgumentParser:
    """The runner's arguments (the contract test checks the race's command against them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--task", choices=("classification", "regression"), required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--budget", type=float, required=True, help="FLAML's time_budget, s")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--folds", type=int, required=True)
    parser.add_argument("--estimators", default="auto", help="auto, ours, or a,b,c")
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main() -> None:
    # FLAML only here: the names above import in our venv too (tests/contracts).
    from flaml import AutoML  # pylint: disable=import-outside-toplevel

    parser = build_parser()
    args = parser.parse_args()

    train = pd.read_parquet(args.train)
    test = pd.read_parquet(args.test)
    features = [column for column in train.columns if column != args.target]
    automl = AutoML()
    started = time.perf_counter()
    automl.fit(
        train[features],
        train[args.target],
        task=args.task,
        metric=args.metric,
        time_budget=args.budget,
        estimator_list=estimator_list(args.estimators, args.task),
        eval_method="cv",
        n_splits=args.folds,
        n_jobs=1,
        seed=args.seed,
        verbose=0,
    )
    fit_s = time.perf_counter() - started
    predictions = pd.DataFrame({"prediction": automl.predict(test[features])})
    if args.task == "classification" and len(automl.classes_) == 2:
        positive = list(automl.classes_).index(max(automl.classes_))
        predictions["proba"] = np.asarray(automl.predict_proba(test[features]))[:, positive]
    predictions.to_parquet(args.out)
    summary = {
        "fit_s": fit_s,
        "best": automl.best_estimator,
        "config": {key: str(value) for key, value in (automl.best_config or {}).items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
