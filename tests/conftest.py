"""Shared fixtures. Server fixtures live in tests/fixtures/ and are registered here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest-xdist's workers (`make test`) export COLUMNS=80, and rich fixes a console's width from
# it when the console is made (at import): CLI output would then fold where a plain run's, and a
# test's own COLUMNS, decide. Gone before anything of ours is imported.
os.environ.pop("COLUMNS", None)

from ml.config import Settings  # noqa: E402  pylint: disable=wrong-import-position

pytest_plugins = [
    "tests.fixtures.mlflow_server",
    "tests.fixtures.trained_model",
    "tests.fixtures.smtp",
    "tests.fixtures.desktop",
    "tests.fixtures.elasticsearch",
    "tests.fixtures.filebeat",
    "tests.fixtures.elastalert",
    "tests.fixtures.postgres",
    "tests.fixtures.ray_serve",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--serial`: which side of the `serial` marker a run takes."""
    parser.addoption(
        "--serial",
        choices=("only", "skip"),
        help="`make test`'s two phases: only the `serial` tests, or all but them. Not `-m`, so "
        "that a -m in PYTEST_ARGS narrows both phases instead of replacing the split",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep one side of the `serial` marker when `--serial` is given."""
    phase = config.getoption("--serial")
    if phase is None:
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        serial = item.get_closest_marker("serial") is not None
        (kept if serial == (phase == "only") else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a fast run with all state in a temporary directory (local SQLite MLflow)."""
    return Settings(
        var_dir=tmp_path / "var", trials=4, timeout_s=120, cv_folds=3, model_name="test-model"
    )


# The session's own MLflow variables, before any test or fixture ran (normally none).
_MLFLOW_URI_VARIABLES = {
    name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
}


@pytest.fixture(autouse=True)
def _reset_mlflow_globals() -> Iterator[None]:
    """MLflow keeps the tracking URI and active run in globals: isolate each test. Its
    setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (for subprocesses), and
    `set_registry_uri(None)` leaves the variable behind: a later test's registry client then
    followed an earlier test's stopped server (connection refused). So both variables go back
    to what the session started with, whatever a test or a module fixture exported."""
    import mlflow

    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name, value in _MLFLOW_URI_VARIABLES.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _reset_application_logs() -> Iterator[None]:
    """A command run in-process (CliRunner) installs the ECS log file handler on the root
    logger (ml.common.logs): take it off and give the root its level back after each test."""
    import logging

    from ml.common.logs import EcsFileHandler

    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, EcsFileHandler) or handler is logging.lastResort:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def _checkout_stays_clean() -> Iterator[None]:
    """No test may leave MLflow's default stores in the checkout: a client without URIs opens
    ./mlflow.db (and ./mlruns for artifacts) in the working directory."""
    strays = [REPO_ROOT / "mlflow.db", REPO_ROOT / "mlruns"]
    before = {path for path in strays if path.exists()}
    yield
    left = sorted(str(path) for path in strays if path.exists() and path not in before)
    assert not left, f"tests left MLflow's default store in the checkout: {left}"
