"""`mlops ct run` that retrains sends one email naming the trigger that fired, its evidence, the
gate's decision and both scores. A real CT run (local MLflow on SQLite, a real SQLite CT store,
two logistic-regression trials) and a real SMTP server (aiosmtpd); what the email must say is
read back from what the run recorded (MLflow tags), never written into the test."""

# pytest fixtures arrive as arguments of the same name; the test name says what it checks
# pylint: disable=missing-function-docstring,redefined-outer-name
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ml.config import Settings
from ml.outcomes import OutcomeStore, PredictionRecord
from tests.fixtures.smtp import Inbox
from tests.unit.registry_support import demo_split, register_champion

pytestmark = pytest.mark.integration


def _report_the_champion_wrong(settings: Settings, model, X) -> None:
    """Serve the holdout rows with the champion and report the opposite label for each: live
    quality collapses, so the performance trigger fires (and the labels join the retrain)."""
    classes = list(model.classes_)
    proba = model.predict_proba(X)
    predicted = [classes[row.argmax()] for row in proba]
    store = OutcomeStore(settings.ct_database)
    store.record_predictions(
        PredictionRecord(
            f"p{i}", settings.model_name, "1", row, label, dict(zip(map(str, classes), p_row))
        )
        for i, (row, label, p_row) in enumerate(zip(X.to_dict("records"), predicted, proba))
    )
    flipped = [classes[1 - classes.index(label)] for label in predicted]
    store.record_feedback([(f"p{i}", label) for i, label in enumerate(flipped)])


@dataclass
class Delivered:
    """The email a CT run sent, and what the run recorded: its tags, the new version's."""

    subject: str
    body: str
    run_tags: dict[str, str]
    version: str
    version_tags: dict[str, str]
    labelled: int


@pytest.fixture
def delivered(smtp_server: Inbox, tmp_path: Path) -> Delivered:
    """`mlops ct run` after outcomes that say the champion is wrong: it retrains and mails."""
    from serving.main import app

    settings = Settings(var_dir=tmp_path / "var", model_name="ct-notify-model", ct_min_labels=50)
    demo = demo_split()
    _, model = register_champion(settings, demo)
    _report_the_champion_wrong(settings, model, demo[1].X_holdout)
    env = {
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_MODEL_NAME": settings.model_name,
        "MLOPS_FAMILIES": "logreg",
        "MLOPS_TRIALS": "2",
        "MLOPS_CT_MIN_LABELS": "50",
        "MLOPS_DESKTOP_NOTIFICATIONS": "false",
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_STARTTLS": "false",
        "SMTP_TO": "ml-team@example.org",
    }

    result = CliRunner().invoke(app, ["ct", "run"], env=env)

    assert result.exit_code == 0, result.output
    assert "ct run: trained" in result.stdout
    [message] = smtp_server.messages
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    newest = max(versions, key=lambda found: int(found.version))
    return Delivered(
        subject=message["Subject"],
        body=message.get_payload(decode=True).decode().replace("\r\n", "\n"),
        run_tags=client.get_run(newest.run_id).data.tags,
        version=str(newest.version),
        version_tags=dict(newest.tags),
        labelled=len(demo[1].X_holdout),
    )


def test_a_retrain_emails_the_trigger_its_evidence_the_decision_and_both_scores(
    delivered: Delivered,
) -> None:
    run, gate, body = delivered.run_tags, delivered.version_tags, delivered.body
    # the trigger that fired, its reason and its evidence, as the run recorded them
    assert run["ct.triggers"] == "performance"
    assert body.startswith(f"performance fired; trained version {delivered.version} ")
    assert f"performance: {run['ct.reasons']}\n" in body
    evidence = json.loads(run["ct.evidence"])["performance"]
    assert f"  evidence: {json.dumps(evidence, default=str)[:1000]}\n" in body
    assert evidence["labelled"] == delivered.labelled

    # the gate's decision, in the subject and the body, and both scores
    verdict = "promoted" if gate["gate.decision"] == "promoted" else "kept the champion"
    assert delivered.subject == f"[SUCCESS] CT retrain of ct-notify-model: {verdict}"
    assert f"gate: {verdict} ({gate['gate.reason']})" in body
    challenger, champion = gate["gate.challenger_score"], gate["gate.champion_score"]
    assert "-" not in (challenger, champion), "the gate scored both (None is tagged '-')"
    assert (
        f"gate ({gate['gate.metric']}): challenger v{delivered.version} {challenger}, "
        f"champion v{gate['gate.champion_version']} {champion}"
    ) in body
