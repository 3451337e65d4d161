"""Pointing MLflow at the configured store: what every command that reads or writes the
registry does first, kept apart from the training pipeline so readers need not import it."""

from __future__ import annotations

from contextlib import AbstractContextManager

import httpx
import mlflow
from mlflow.tracking import MlflowClient

from ml.common.locks import database_lock
from ml.config import Settings

PROBE_TIMEOUT_S = 5.0
STORE_LOCK_WAIT_S = 300.0  # a new store's migrations take seconds


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer: nothing was read or written."""


def require_reachable(tracking_uri: str) -> None:
    """One `GET /health` before any work: a server that is down fails the command at once
    with its address, where MLflow's own client retries each call for about four minutes
    (7 retries with backoff, measured) and then prints a traceback."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} is unreachable ({exc}); nothing was changed"
        ) from exc


def configure_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store; create the experiment; return its id.
    TrackingUnavailable when the configured server does not answer."""
    require_reachable(str(settings.mlflow_tracking_uri))
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


def store_setup_lock(settings: Settings) -> AbstractContextManager[None]:
    """For the block, this process alone sets up the MLflow and Optuna stores (tables, the
    experiment, the study): MLflow builds a new database's schema with migrations, which fail
    in the second of two processes starting together ("table datasets already exists").
    Held in the CT database (`ml.common.locks`)."""
    return database_lock(settings.ct_database, "store-setup", STORE_LOCK_WAIT_S)
