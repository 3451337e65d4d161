"""Shared fixtures. Server fixtures live in tests/fixtures/ and are registered here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.config import Settings

pytest_plugins = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.trained_model",
    "tests.fixtures.smtp",
    "tests.fixtures.desktop",
    "tests.fixtures.elasticsearch",
    "tests.fixtures.ray_serve",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a fast run with all state in a temporary directory (local SQLite MLflow)."""
    return Settings(
        var_dir=tmp_path / "var", trials=4, timeout_s=120, cv_folds=3, model_name="test-model"
    )


@pytest.fixture(autouse=True)
def _reset_mlflow_globals() -> Iterator[None]:
    """MLflow keeps the tracking URI and active run in globals: isolate each test."""
    import mlflow

    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
