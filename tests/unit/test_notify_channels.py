"""`mlops notify --channels`: Jenkins asks for the desktop only on a failed build, which
emailext mails itself (one event, one email). Delivery itself is tested against a real SMTP
server and notification daemon in tests/integration/test_notify.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ml.config import Settings
from ml.notify import notify
from serving.main import app


def test_only_the_asked_channels_are_tried(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", desktop_notifications=False)
    assert notify(settings, "failure", "t", "b", ["desktop"]) == {"desktop": False}
    assert set(notify(settings, "success", "t", "b")) == {"email", "desktop"}


def test_an_unknown_channel_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["notify", "--status", "failure", "--title", "t", "--channels", "pager"],
        env={"MLOPS_VAR_DIR": str(tmp_path / "var")},
    )
    assert result.exit_code == 2
    assert "--channels" in result.output and "pager" in result.output
