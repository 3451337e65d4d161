"""Notifications: email over SMTP and a desktop pop-up.

Both are best effort: a notification that cannot be delivered logs a warning and returns
False, it never raises, so a broken mail server cannot fail a pipeline or a drift check.
"""

from __future__ import annotations

import logging
import os
import shutil
import smtplib
import ssl
import subprocess  # nosec B404  # notify-send only, fixed argv
import sys
from collections.abc import Sequence
from email.message import EmailMessage

from ml.config import Settings

log = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 20.0
NOTIFY_SEND_TIMEOUT_S = 10.0
APP_NAME = "mlops"
STATUSES: tuple[str, ...] = ("success", "failure", "unstable", "aborted")


def send_email(settings: Settings, subject: str, body: str) -> bool:
    """Send a plain-text email to `settings.smtp_to`; True when the server accepted it."""
    if not settings.smtp_host or not settings.smtp_to:
        log.info("email not configured (SMTP_HOST/SMTP_TO unset); skipped: %s", subject)
        return False
    message = _build_message(settings, subject, body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_user and settings.smtp_password:
                smtp.login(settings.smtp_user, settings.smtp_password.get_secret_value())
            refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning(
            "email to %s via %s:%s failed: %s",
            ", ".join(settings.smtp_to),
            settings.smtp_host,
            settings.smtp_port,
            _without_secret(settings, exc),
        )
        return False
    if refused:
        log.warning("email refused for %s", ", ".join(sorted(refused)))
    return len(refused) < len(settings.smtp_to)


def _build_message(settings: Settings, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(settings.smtp_to)
    message.set_content(body)
    return message


def _without_secret(settings: Settings, exc: BaseException) -> str:
    """The error text, with the SMTP password blanked in case a server echoed it."""
    text = f"{type(exc).__name__}: {exc}"
    if settings.smtp_password is not None:
        secret = settings.smtp_password.get_secret_value()
        if secret:
            text = text.replace(secret, "********")
    return text


def notify_desktop(settings: Settings, title: str, body: str) -> bool:
    """Show a desktop notification where a session bus exists; else log a line."""
    if not settings.desktop_notifications:
        log.info("desktop notifications disabled: %s", title)
        return False
    if not sys.platform.startswith("linux"):
        return _notify_with_plyer(title, body)
    if not settings.dbus_session_bus_address:
        log.info("no D-Bus session bus (headless): %s: %s", title, body)
        return False
    return _notify_linux(title, body, settings.dbus_session_bus_address)


def _notify_with_plyer(title: str, body: str) -> bool:
    """macOS and Windows: plyer picks the native backend."""
    from plyer import notification

    try:
        notification.notify(title=title, message=body, app_name=APP_NAME, timeout=10)
    except Exception as exc:  # pylint: disable=broad-exception-caught  # any backend error
        log.warning("desktop notification failed: %s", exc)
        return False
    return True


def _notify_linux(title: str, body: str, bus_address: str) -> bool:
    """plyer's D-Bus backend when dbus-python is there, else notify-send (return code checked).

    Never plyer's `instance()`: it takes the Flatpak portal path whenever /app exists, and its
    notify-send backend ignores the exit status, so a failure would pass silently.
    """
    try:
        import dbus  # noqa: F401  # pylint: disable=import-error,unused-import
    except ImportError:
        return _notify_send(title, body, bus_address)
    from plyer.platforms.linux.notification import NotifyDbus

    try:
        NotifyDbus().notify(title=title, message=body, app_name=APP_NAME, timeout=10)
    except Exception as exc:  # pylint: disable=broad-exception-caught  # dbus raises its own
        log.warning("desktop notification over D-Bus failed: %s", exc)
        return False
    return True


def _notify_send(title: str, body: str, bus_address: str) -> bool:
    executable = shutil.which("notify-send")
    if executable is None:
        log.info("notify-send not installed (Debian: libnotify-bin): %s: %s", title, body)
        return False
    command = [executable, "--app-name", APP_NAME, title, body]
    # the child gets the parent's environment with the configured bus, not just the bus
    child_env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus_address}
    try:
        done = subprocess.run(  # nosec B603  # fixed executable, no shell
            command,
            capture_output=True,
            text=True,
            timeout=NOTIFY_SEND_TIMEOUT_S,
            check=False,
            env=child_env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("notify-send failed: %s", exc)
        return False
    if done.returncode != 0:
        log.warning("notify-send exited %s: %s", done.returncode, done.stderr.strip())
        return False
    return True


CHANNELS: tuple[str, ...] = ("email", "desktop")


def notify(
    settings: Settings, status: str, title: str, body: str, channels: Sequence[str] = CHANNELS
) -> dict[str, bool]:
    """Email and/or desktop notification for a pipeline outcome; which channels delivered.
    Jenkins mails a failed build itself (emailext, with the log), so it asks for the desktop
    only then: one event, one email."""
    subject = f"[{status.upper()}] {title}"
    senders = {"email": send_email, "desktop": notify_desktop}
    return {channel: senders[channel](settings, subject, body) for channel in channels}
