"""A registered demo champion on a local MLflow store, for tests that need one (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.data import Dataset, Split, load_dataset, split
from ml.registry import run_gate
from ml.training import fit_best, log_and_register

LOGREG = {"family": "logreg", "C": 1.0}


def retrain_settings(tmp_path: Path, model_name: str, **more: object) -> Settings:
    """A CT run's settings with the smallest real training budget, state under `tmp_path`."""
    return Settings(
        var_dir=tmp_path / "var",
        model_name=model_name,
        families=["logreg"],
        trials=2,
        timeout_s=120,
        cv_folds=3,
        **more,  # type: ignore[arg-type]
    )


def demo_split() -> tuple[Dataset, Split]:
    dataset = load_dataset("demo", None)
    return dataset, split(dataset, 0.2, 42)


def register_champion(settings: Settings, demo: tuple[Dataset, Split]) -> tuple[str, Any]:
    """Fit a logistic regression on the demo data, register it and let the gate promote it;
    (its version, the fitted pipeline)."""
    import mlflow

    configure_tracking(settings)
    dataset, holdout_split = demo
    with mlflow.start_run():
        model = fit_best(LOGREG, dataset, holdout_split, seed=42)
        version = log_and_register(model, LOGREG, dataset, holdout_split, settings).version
    run_gate(MlflowClient(), settings.model_name, version, holdout_split, "roc_auc", 0.0)
    return version, model
