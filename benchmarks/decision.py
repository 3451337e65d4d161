"""Decision thresholds on an imbalanced table (issue 23): the holdout F1 of the model each
configuration chooses, at 0.5 and at its tuned threshold, beside scikit-learn's untuned
estimators at 0.5 on the same split.

    .venv/bin/python benchmarks/decision.py                  # 5,000 rows, 24 trials a run
    .venv/bin/python benchmarks/decision.py --rows 2000 --trials 12

The table is churn-like: `make_classification` with 14% positives, two of its informative
columns turned into a plan (four categories) and a yes/no membership, so the categorical
encoders matter. Each configuration is one real `run_pipeline` in its own temporary
directory (local MLflow and Optuna files), so nothing is shared between them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from sklearn.datasets import make_classification
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import Pipeline

from ml.config import Settings
from ml.data import Dataset, Split, split, validate
from ml.families import FAMILIES, family
from ml.features import build_preprocessor
from ml.pipeline import run_pipeline

console = Console(width=160)

# (label, settings overrides): as before this change, then the two ways to ask for a threshold.
CONFIGURATIONS = (
    ("roc_auc, no threshold (as before)", {"tuning_metric": "roc_auc", "decision_metric": "none"}),
    (
        "roc_auc, threshold for f1",
        {"tuning_metric": "roc_auc", "decision_metric": "f1", "promotion_metric": "f1"},
    ),
    ("f1 (threshold for f1: auto)", {"tuning_metric": "f1", "promotion_metric": "f1"}),
)


def churn_like(rows: int, seed: int) -> Dataset:
    """Six numeric columns, a four-level plan and a yes/no membership; 14% churn."""
    frame = churn_like_frame(rows, seed)
    return validate(frame, "churned", source=f"churn_like({rows}, seed={seed})")


def churn_like_frame(rows: int, seed: int) -> pd.DataFrame:
    """churn_like's raw table (target `churned`, 0/1), for benchmarks that split it themselves."""
    features, labels = make_classification(
        n_samples=rows,
        n_features=8,
        n_informative=5,
        n_redundant=1,
        weights=[0.86],
        class_sep=0.8,
        flip_y=0.02,
        random_state=seed,
    )
    frame = pd.DataFrame(features[:, :6], columns=[f"usage_{i}" for i in range(6)])
    frame["plan"] = pd.cut(
        features[:, 6], [-np.inf, -0.7, 0.0, 0.7, np.inf], labels=["basic", "plus", "pro", "max"]
    ).astype(str)
    frame["member"] = np.where(features[:, 7] > 0.3, "yes", "no")
    frame["churned"] = labels
    return frame


def untuned(name: str, dataset: Dataset, data_split: Split, seed: int) -> Pipeline:
    """scikit-learn's own defaults of a family's estimator, behind the family's preprocessing."""
    entry = family(name)
    estimator = type(entry.build(entry.cheap_defaults or {}, seed))(random_state=seed)
    model = Pipeline(
        [
            ("preprocess", build_preprocessor(dataset.feature_types, entry.scale_numeric)),
            ("classifier", estimator),
        ]
    )
    return model.fit(data_split.X_train, data_split.y_train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the generated table")
    args = parser.parse_args()
    dataset = churn_like(args.rows, args.seed)
    table = Table(
        "configuration",
        "chosen model",
        "threshold",
        "holdout F1 at 0.5",
        "holdout F1 at threshold",
        "holdout ROC AUC",
        title=f"{dataset.report.source}: {args.trials} trials, positives "
        f"{dataset.y.mean():.1%}",
    )
    with tempfile.TemporaryDirectory(prefix="bench-decision-") as work:
        data_split: Split | None = None
        for index, (label, overrides) in enumerate(CONFIGURATIONS):
            settings = Settings(
                var_dir=Path(work) / str(index),
                trials=args.trials,
                timeout_s=None,
                **overrides,  # type: ignore[arg-type]
            )
            result = run_pipeline(settings, dataset=dataset)
            data_split = split(dataset, settings.test_size, settings.seed)
            mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
            metrics = MlflowClient().get_run(result.run_id).data.metrics  # the registered model's
            threshold = result.tuning.threshold
            run = MlflowClient().get_run(result.run_id)
            kept = run.data.tags.get("chosen_model", "tuned")
            table.add_row(
                label,
                _describe(result.tuning.best_params) if kept == "tuned" else kept,
                "-" if threshold is None else f"{threshold:.3f}",
                f"{metrics.get('holdout_f1_at_0.5', metrics['holdout_f1']):.3f}",
                "-" if threshold is None else f"{metrics['holdout_f1']:.3f}",
                f"{metrics['holdout_roc_auc']:.4f}",
            )
        assert data_split is not None
        for name in FAMILIES:
            model = untuned(name, dataset, data_split, 42)
            proba = model.predict_proba(data_split.X_holdout)[:, 1]
            table.add_row(
                f"untuned {type(model[-1]).__name__}()",
                "-",
                "-",
                f"{f1_score(data_split.y_holdout, model.predict(data_split.X_holdout)):.3f}",
                "-",
                f"{roc_auc_score(data_split.y_holdout, proba):.4f}",
            )
    console.print(table)


def _describe(params: dict[str, object]) -> str:
    shown = ", ".join(f"{key}={_short(value)}" for key, value in params.items() if key != "family")
    return f"{params['family']} ({shown})"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
