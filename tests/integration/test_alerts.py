"""The repo's alert rules (elk/alerts/rules/) run by the real ElastAlert 2 against the real
Elasticsearch, mailing a real SMTP server (aiosmtpd) with the project's SMTP_* settings.

The documents are the ones the app writes: built by elk.events and delivered by the project's
own ElasticsearchSink. ElastAlert runs every 2 s over a 10 s buffer; instead of sleeping, a test
waits for the rule's own run count (ElastAlert's `_status` writeback documents) to advance, so
"no second mail" means "the rule ran again twice more and stayed quiet".
"""

# pytest fixtures are passed by parameter name: pylint: disable=redefined-outer-name
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from elk import events
from elk.sinks import ElasticsearchSink
from elk.stack import install_templates
from tests.fixtures.elasticsearch import ElasticsearchServer
from tests.fixtures.elastalert import ALERT_RECIPIENT, ElastAlert, select_rules
from tests.fixtures.smtp import SMTP_PASSWORD, Inbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_RULES = (
    "model_load_failed",
    "serving_latency_p99",
    "serving_error_rate",
    "telemetry_dropped",
    "telemetry_silent",
    "disk_nearly_full",
    "drift_detected",
    "promotion_decision",
)
# Runs of every rule after the last document before "nothing (more) was sent" is believed.
QUIET_RUNS = 2


@pytest.fixture
def sink(elasticsearch_server: ElasticsearchServer, tmp_path: Path) -> ElasticsearchSink:
    client: Elasticsearch = elasticsearch_server.client()
    install_templates(client)
    # The error-rate rule reads 5 minutes back: failed rows served by an earlier test on this
    # worker (the dashboards e2e test serves some) would mail too.
    elasticsearch_server.forget_events()
    return ElasticsearchSink(client, tmp_path / "spool", "alerts-test")


def _write(sink: ElasticsearchSink, batch: list[dict[str, Any]]) -> None:
    sink.write(batch)
    assert sink.delivered >= len(batch) and sink.spooled == 0, "the sink did not deliver"


def _wait_for_mail(inbox: Inbox, ea: ElastAlert, timeout_s: float = 120) -> Message:
    deadline = time.monotonic() + timeout_s
    while not inbox.messages:
        assert time.monotonic() < deadline, f"no alert mail arrived:\n{ea.log()}"
        time.sleep(0.5)
    return inbox.messages[0]


def _let_rules_run_again(ea: ElastAlert, rules: tuple[str, ...]) -> None:
    targets = {rule: ea.runs(rule) + QUIET_RUNS for rule in rules}
    for rule, count in targets.items():
        ea.wait_for_runs(rule, count)


def _healthy_period(model: str) -> list[dict[str, Any]]:
    """What a healthy deployment writes: a good load, heartbeats with nothing dropped, fast
    successful predictions, a half-empty disk, a feature under its drift threshold."""
    now = events.utc_now_iso()
    batch = [
        events.model_load_event(
            model_name=model, model_version="3", status="success", duration_s=2.5
        )
    ]
    batch += [
        events.serving_health_event(model_name=model, dropped_total=0, queued=0) for _ in range(3)
    ]
    batch += [
        events.prediction_event(
            model_name=model,
            model_version="3",
            prediction_id=uuid.uuid4().hex,
            label=1,
            probability=0.9,
            latency_ms=12.0 + number % 5,
            route="/predict",
        )
        for number in range(40)
    ]
    gib = 1024**3
    batch.append(
        events.filesystem_event(
            mount_point="/",
            device="/dev/sda1",
            fs_type="ext4",
            total=100 * gib,
            used=50 * gib,
            free=50 * gib,
        )
    )
    batch.append(
        events.drift_event(
            model_name=model,
            model_version="3",
            feature="age",
            feature_type="numeric",
            psi=0.02,
            ks_pvalue=0.7,
            window_start=now,
            window_end=now,
            window_size=500,
            threshold=0.2,
        )
    )
    return batch


def test_a_failed_model_load_is_one_mail(
    elastalert: Callable[..., ElastAlert], smtp_server: Inbox, sink: ElasticsearchSink
) -> None:
    """Two failed loads in one incident: one mail, to SMTP_TO, naming the model and the error;
    the rule keeps running (realert) without a second one."""
    ea = elastalert()
    ea.wait_for_runs("model_load_failed", 1)
    model = f"alerts-{uuid.uuid4().hex[:8]}"
    failure = {"model_name": model, "model_version": "7", "status": "failure", "duration_s": 0.4}
    _write(
        sink,
        [
            events.model_load_event(**failure, error="OSError: model.pkl not found"),
            events.model_load_event(**failure, error="OSError: model.pkl not found"),
        ],
    )

    mail = _wait_for_mail(smtp_server, ea)
    _let_rules_run_again(ea, ("model_load_failed",))

    assert len(smtp_server.messages) == 1, [m["Subject"] for m in smtp_server.messages]
    assert mail["Subject"] == f"[mlops] model load failed: {model} 7"
    assert "model.pkl not found" in mail.get_payload(decode=True).decode()
    assert smtp_server.recipients == [[ALERT_RECIPIENT]]
    assert SMTP_PASSWORD not in ea.log()


def test_a_healthy_period_sends_no_mail(
    elastalert: Callable[..., ElastAlert], smtp_server: Inbox, sink: ElasticsearchSink
) -> None:
    """Every rule of the repo over a healthy period: each runs several times, none mails."""
    ea = elastalert()
    for rule in ALL_RULES:
        ea.wait_for_runs(rule, 1)
    _write(sink, _healthy_period(f"alerts-{uuid.uuid4().hex[:8]}"))
    _let_rules_run_again(ea, ALL_RULES)
    assert smtp_server.messages == [], [m["Subject"] for m in smtp_server.messages]


def _served_rows(model: str, count: int, latency_ms: float, status: str) -> list[dict[str, Any]]:
    return [
        events.prediction_event(
            model_name=model,
            model_version="3",
            prediction_id=uuid.uuid4().hex,
            label=None if status != "success" else 1,
            probability=0.0 if status != "success" else 0.9,
            latency_ms=latency_ms,
            route="/predict",
            status=status,
            error=None if status == "success" else "HTTP 503: no model loaded",
        )
        for _ in range(count)
    ]


def test_an_incident_is_one_mail_per_rule(
    elastalert: Callable[..., ElastAlert],
    smtp_server: Inbox,
    sink: ElasticsearchSink,
    tmp_path: Path,
) -> None:
    """An incident the way serving records it: its heartbeat stops (the collector dies) after
    a burst of slow rows (2 s each) and of failed rows (5xx) among healthy ones. The latency,
    error-rate and silence rules each mail once, and keep running without a second mail.

    The repo's silence rule waits 10 minutes; the copy here waits 20 s (only `timeframe`
    differs), so the test checks the rule's logic, not the production window."""
    rules = ("serving_latency_p99", "serving_error_rate", "telemetry_silent")
    folder = select_rules(tmp_path / "rules", *rules)
    silent = folder / "telemetry_silent.yaml"
    silent.write_text(
        silent.read_text().replace("timeframe: {minutes: 10}", "timeframe: {seconds: 20}")
    )
    assert "seconds: 20" in silent.read_text(), "the rule's timeframe line changed"
    model = f"alerts-{uuid.uuid4().hex[:8]}"
    _write(sink, [events.serving_health_event(model_name=model, dropped_total=0, queued=0)])
    ea = elastalert(folder)
    _write(
        sink,
        _served_rows(model, 40, 15.0, "success")
        + _served_rows(model, 30, 2_000.0, "success")
        + _served_rows(model, 30, 3.0, "failure"),
    )

    deadline = time.monotonic() + 120
    while len(smtp_server.messages) < len(rules):
        assert time.monotonic() < deadline, ([m["Subject"] for m in smtp_server.messages], ea.log())
        time.sleep(0.5)
    _let_rules_run_again(ea, rules)

    assert sorted(m["Subject"] for m in smtp_server.messages) == [
        "[mlops] no serving telemetry for 10 minutes",
        "[mlops] serving error rate over 5 %",
        "[mlops] serving p99 latency over 500 ms",
    ]
