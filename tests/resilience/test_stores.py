"""The MLflow server is down (its real process stopped) while commands need it.

`promote`, `ct run`, `pipeline` and `serve --update` run through the real `mlops` command
(typer's runner, in this process: a subprocess would cost its 5 s of imports each) against a
stopped server: each fails at once with one line naming the server and exit code 1, and the
registry is unchanged when the server is back. A replica starting while the server is down
refuses to take traffic and says why; one already serving keeps its model through a failed
reload. The session's Ray Serve app shows `serve --update` leaves a running deployment as it was.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ml.common.tracking import configure_tracking
from ml.predict import load_version
from serving.main import app
from serving.schemas import ServingOptions
from serving.service import ModelService
from tests.fixtures.mlflow_server import StoppableMlflowServer
from tests.fixtures.ray_serve import ServeApp
from tests.fixtures.trained_model import RegisteredModel
from tests.resilience.chain_support import aliased_versions_are_whole
from tests.unit.serving_support import TelemetryCollector

pytestmark = [pytest.mark.resilience, pytest.mark.integration]


def mlops(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


def one_error_line(output: str, uri: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: MLflow tracking server {uri} is unreachable ({errors[0].split('(', 1)[1]}"
    ], output
    assert "Traceback" not in output


def test_with_the_registry_down_commands_fail_in_one_line_and_serving_goes_on(
    stoppable_model: RegisteredModel,
    stoppable_mlflow_server: StoppableMlflowServer,
    serve_app: ServeApp,
    tmp_path: Path,
) -> None:
    """One stop of the server for every case: a restart costs seconds of MLflow start-up."""
    configure_tracking(stoppable_model.settings)
    serving = ModelService(stoppable_model.settings, load_version, TelemetryCollector())
    starting = ModelService(stoppable_model.settings, load_version, TelemetryCollector())
    options = ServingOptions(model_uri=f"models:/{stoppable_model.name}/1")
    served_before = httpx.get(f"{serve_app.base_url}/version", timeout=30).json()
    asyncio.run(serving.apply(options))
    stoppable_mlflow_server.stop()
    try:
        env = {
            "MLOPS_VAR_DIR": str(tmp_path / "var"),
            "MLOPS_MLFLOW_TRACKING_URI": stoppable_mlflow_server.uri,
            "MLOPS_MODEL_NAME": stoppable_model.name,
            "MLOPS_FAMILIES": "logreg",
        }
        for args in (["promote", "--version", "1"], ["ct", "run", "--force"], ["pipeline"]):
            code, output = mlops(args, env)
            assert code == 1, (args, output)
            one_error_line(output, stoppable_mlflow_server.uri)

        # `serve --update` of the session's running app, pointed at the stopped server.
        code, output = mlops(
            ["serve", "--update"],
            {
                "MLOPS_VAR_DIR": str(serve_app.settings.var_dir),
                "MLOPS_MLFLOW_TRACKING_URI": stoppable_mlflow_server.uri,
                "MLOPS_MODEL_NAME": serve_app.model.name,
                "MLOPS_SERVE_PORT": str(serve_app.port),
            },
        )
        assert code == 1, output
        one_error_line(output, stoppable_mlflow_server.uri)
        assert httpx.get(f"{serve_app.base_url}/version", timeout=30).json() == served_before
        health = httpx.get(f"{serve_app.base_url}/health", timeout=30).json()
        assert health["status"] == "ready" and health["model_uri"] == served_before["model_uri"]

        # A replica starting now takes no traffic and says why (Serve retries it later).
        with pytest.raises(Exception, match="is unreachable"):
            asyncio.run(starting.apply(options))
        assert starting.health({}).status == 503
        assert "is unreachable" in starting.health({}).body["last_load"]["error"]

        # One serving reloads (a redeploy): the load fails, its model stays.
        asyncio.run(serving.apply(options))
        health = serving.health({})
        assert (health.status, health.body["model_uri"]) == (200, options.model_uri)
        assert "is unreachable" in health.body["last_load"]["error"]
    finally:
        stoppable_mlflow_server.start()
        gc.unfreeze()
    client = MlflowClient(stoppable_mlflow_server.uri)
    assert aliased_versions_are_whole(client, stoppable_model.name)["champion"] == "1"
