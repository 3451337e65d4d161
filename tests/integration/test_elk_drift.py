"""Drift alerts end to end: a real MLflow server holds the model version and its reference
profile, shifted inputs produce drift events and an email at a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from elk import events
from elk.drift_check import DriftInputError, check_drift
from elk.sinks import build_emitter
from ml.config import Settings
from ml.data import load_frame
from tests.fixtures.smtp import Inbox
from tests.fixtures.trained_model import RegisteredModel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SHIFTED = ["mean radius", "worst area"]


def _inputs(shift: bool) -> pd.DataFrame:
    frame = load_frame("demo").drop(columns=["target"]).sample(400, random_state=7)
    if shift:
        for column in SHIFTED:
            frame[column] = frame[column] + 3 * frame[column].std()
    return frame.reset_index(drop=True)


def _settings(model: RegisteredModel, tmp_path: Path, inbox: Inbox) -> Settings:
    return model.settings.model_copy(
        update={
            "var_dir": tmp_path,
            "log_dir": tmp_path / "log",
            "smtp_host": inbox.host,
            "smtp_port": inbox.port,
            "smtp_starttls": False,
            "smtp_to": ["ml-team@example.com"],
        }
    )


def _serve(settings: Settings, model: RegisteredModel, frame: pd.DataFrame) -> None:
    """Prediction events as serving emits them, carrying each row's features."""
    emitter = build_emitter(settings, "mlops-serving")
    for number, row in enumerate(frame.to_dict("records")):
        emitter.emit(
            events.prediction_event(
                model_name=model.name,
                model_version=model.version,
                prediction_id=str(number),
                label=1,
                probability=0.9,
                latency_ms=2.0,
                route="/predict",
                features=row,
            )
        )
    emitter.close()


def _drift_lines(settings: Settings) -> list[dict]:
    path = Path(str(settings.log_dir)) / "mlops-mlops.drift.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shifted_recent_inputs_raise_drift_events_and_an_email(
    registered_model: RegisteredModel, smtp_server: Inbox, tmp_path: Path
) -> None:
    settings = _settings(registered_model, tmp_path, smtp_server)
    _serve(settings, registered_model, _inputs(shift=True))
    report = check_drift(settings)
    assert report.model_version == registered_model.version and report.rows == 400
    assert {drift.feature for drift in report.drifted} == set(SHIFTED)
    assert report.emailed
    lines = _drift_lines(settings)
    assert len(lines) == len(report.drifts)
    flagged = {
        line["mlops"]["drift"]["feature"] for line in lines if line["mlops"]["drift"]["drifted"]
    }
    assert flagged == set(SHIFTED)
    assert all(
        line["mlops"]["drift"]["reference"]["model_version"] == registered_model.version
        for line in lines
    )
    (message,) = smtp_server.messages
    assert "drift" in message["Subject"] and registered_model.name in message["Subject"]
    body = message.get_payload(decode=True).decode()
    assert all(feature in body for feature in SHIFTED)
    assert smtp_server.recipients == [["ml-team@example.com"]]


def test_unshifted_inputs_send_no_email(
    registered_model: RegisteredModel, smtp_server: Inbox, tmp_path: Path
) -> None:
    settings = _settings(registered_model, tmp_path, smtp_server)
    _serve(settings, registered_model, _inputs(shift=False))
    report = check_drift(settings)
    assert report.drifted == [] and not report.emailed
    assert smtp_server.messages == []
    assert not any(line["mlops"]["drift"]["drifted"] for line in _drift_lines(settings))


def test_no_recent_predictions_is_a_clear_error(
    registered_model: RegisteredModel, smtp_server: Inbox, tmp_path: Path
) -> None:
    settings = _settings(registered_model, tmp_path, smtp_server)
    with pytest.raises(DriftInputError, match="--input"):
        check_drift(settings)


def test_drift_cli_with_an_input_file(
    registered_model: RegisteredModel, smtp_server: Inbox, tmp_path: Path
) -> None:
    shifted = tmp_path / "shifted.csv"
    _inputs(shift=True).to_csv(shifted, index=False)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": str(registered_model.settings.mlflow_tracking_uri),
        "MLOPS_MODEL_NAME": registered_model.name,
        "MLOPS_VAR_DIR": str(tmp_path),
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_STARTTLS": "false",
        "SMTP_TO": "ml-team@example.com",
    }
    env.pop("ELASTICSEARCH_URL", None)
    mlops = str(Path(sys.executable).parent / "mlops")
    done = subprocess.run(
        [mlops, "monitor", "drift", "--input", str(shifted), "--fail-on-drift"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # --fail-on-drift
    assert "feature(s) drifted" in done.stdout and "alert emailed" in done.stdout
    assert len(smtp_server.messages) == 1
    missing = subprocess.run(
        [mlops, "monitor", "drift", "--input", str(tmp_path / "no.csv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert missing.returncode == 2 and "--input" in missing.stderr
    assert "Traceback" not in missing.stderr
