"""ml.notify against real servers: aiosmtpd for email, dunst on a private D-Bus session under
Xvfb for desktop notifications."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml.config import Settings
from ml.notify import notify_desktop, send_email
from tests.fixtures.desktop import Desktop
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.smtp import SMTP_PASSWORD, SMTP_USER, Inbox

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def _mail_settings(inbox: Inbox, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "smtp_host": inbox.host,
        "smtp_port": inbox.port,
        "smtp_starttls": False,
        "smtp_to": ["ml-team@example.org", "oncall@example.org"],
        "smtp_from": "jenkins@example.org",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_email_is_delivered_with_subject_body_and_recipients(smtp_server: Inbox) -> None:
    body = "Build #42 of mlops/quality failed in stage 'lint'.\nhttp://jenkins/job/42/"

    assert send_email(_mail_settings(smtp_server), "[FAILURE] mlops/quality #42", body)

    [message] = smtp_server.messages
    assert message["Subject"] == "[FAILURE] mlops/quality #42"
    assert message["From"] == "jenkins@example.org"
    assert message.get_payload(decode=True).decode().replace("\r\n", "\n").strip() == body
    assert smtp_server.recipients == [["ml-team@example.org", "oncall@example.org"]]


def test_email_logs_in_and_never_logs_the_password(
    smtp_server: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = _mail_settings(smtp_server, smtp_user=SMTP_USER, smtp_password=SMTP_PASSWORD)
    bad = _mail_settings(smtp_server, smtp_user=SMTP_USER, smtp_password="wrong-" + SMTP_PASSWORD)

    assert send_email(good, "authenticated", "ok")
    assert not send_email(bad, "refused", "never delivered")

    assert [m["Subject"] for m in smtp_server.messages] == ["authenticated"]
    assert "SMTPAuthenticationError" in caplog.text
    assert SMTP_PASSWORD not in caplog.text


def test_email_to_a_dead_server_returns_false_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_to=["a@example.org"])

    assert send_email(settings, "nobody listens", "body") is False
    assert "failed" in caplog.text


def test_desktop_notification_reaches_the_daemon(desktop: Desktop) -> None:
    settings = Settings(dbus_session_bus_address=desktop.bus_address)

    assert notify_desktop(settings, "[SUCCESS] mlops/training #7", "champion is version 3")

    assert desktop.dunstctl("count", "displayed") == "1"
    desktop.dunstctl("close-all")
    assert "[SUCCESS] mlops/training #7" in desktop.dunstctl("history")


def test_no_session_bus_logs_a_line_instead(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    assert notify_desktop(Settings(dbus_session_bus_address=None), "headless", "body") is False
    assert "no D-Bus session bus" in caplog.text


def test_cli_notify_delivers_both_and_a_dead_smtp_never_fails(
    smtp_server: Inbox, desktop: Desktop
) -> None:
    env = desktop.env() | {
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_STARTTLS": "false",
        "SMTP_TO": "ml-team@example.org",
    }
    command = [str(Path(sys.executable).parent / "mlops")]
    args = ["notify", "--status", "failure", "--title", "mlops/deploy #9", "--body", "rollout"]

    sent = subprocess.run(
        [*command, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    dead = subprocess.run(
        [*command, *args],
        env=env | {"SMTP_PORT": str(free_port())},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert sent.returncode == 0, sent.stderr
    assert "email: sent, desktop: sent" in sent.stdout
    assert smtp_server.messages[0]["Subject"] == "[FAILURE] mlops/deploy #9"
    assert dead.returncode == 0, dead.stderr
    assert "email: not sent" in dead.stdout


def test_flatpak_marker_does_not_divert_the_notification(
    desktop: Desktop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers often have /app, which makes plyer pick the Flatpak portal (not running
    here, as in a container): the notification must still reach the real daemon."""
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: path == "/app" or real_isdir(path))
    settings = Settings(dbus_session_bus_address=desktop.bus_address)

    assert notify_desktop(settings, "inside a container", "no portal here")

    desktop.dunstctl("close-all")
    assert "inside a container" in desktop.dunstctl("history")
