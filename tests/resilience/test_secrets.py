"""Secrets never leave the environment: after a run that used each one, grep everything.

One var/ and the real `mlops` command (typer's runner, in this process) with an admin token, an
SMTP password and an Elasticsearch password set: `config show`; `pipeline` with telemetry
pointed at an Elasticsearch URL where nothing listens (the client is built with the password,
fails, and spools); `notify` through the real SMTP fixture, which accepts only that password
(so the mail arriving proves it was used). Then no token may appear in any command's output,
in any file under var/ (logs, NDJSON events, the spool, the SQLite stores byte for byte), or in
any MLflow run's params and tags or version's tags. Serving's own use of the admin token (the
Ray replicas' logs) is covered by the contract tests of the admin routes, not here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from serving.main import app
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.smtp import SMTP_PASSWORD, SMTP_USER, Inbox

pytestmark = [pytest.mark.resilience, pytest.mark.integration]


def test_no_token_reaches_output_files_events_or_mlflow(smtp_server: Inbox, tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    secrets = {
        "MLOPS_ADMIN_TOKEN": f"admin-{uuid.uuid4().hex}",
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "ELASTICSEARCH_PASSWORD": f"es-{uuid.uuid4().hex}",
    }
    env = {
        **secrets,
        "MLOPS_VAR_DIR": str(var_dir),
        "MLOPS_FAMILIES": "logreg",
        "MLOPS_MODEL_NAME": "secret-model",
        "ELASTICSEARCH_URL": f"http://127.0.0.1:{free_port()}",
        "ELASTICSEARCH_USERNAME": "elastic",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_USER": SMTP_USER,
        "SMTP_STARTTLS": "false",
        "SMTP_TO": "team@example.com",
    }
    outputs = []
    for args in (
        ["config", "show"],
        ["pipeline", "--trials", "2"],
        ["notify", "--status", "success", "--title", "t", "--channels", "email"],
    ):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert len(smtp_server.messages) == 1  # the SMTP password was used, and accepted

    haystacks = {f"output of mlops {i}": text.encode() for i, text in enumerate(outputs)}
    files = [path for path in var_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".ndjson" for path in files)  # events were written
    haystacks.update({str(path): path.read_bytes() for path in files})
    client = MlflowClient(f"sqlite:///{var_dir / 'mlflow.db'}")
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            haystacks[f"run {run.info.run_id}"] = repr((run.data.params, run.data.tags)).encode()
    for version in client.search_model_versions("name='secret-model'"):
        haystacks[f"version {version.version}"] = repr(version.tags).encode()

    for name, value in secrets.items():
        leaks = [where for where, text in haystacks.items() if value.encode() in text]
        assert not leaks, f"{name} found in {leaks}"
