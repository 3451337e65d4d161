"""Pointing MLflow at the configured store: what every command that reads or writes the
registry does first, kept apart from the training pipeline so readers need not import it."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from ml.config import Settings


def configure_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store; create the experiment; return its id."""
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # A local store keeps artifacts under var/ rather than ./mlruns in whatever cwd.
        location = settings.artifact_root.as_uri() if settings.uses_local_tracking else None
        experiment_id = client.create_experiment(settings.experiment_name, location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
