"""What every `mlops` sub-command shares: the consoles, settings with the CLI's options on
top, and one clear message with exit code 2 for errors a user can cause."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from ml.common.logs import install_json_logs
from ml.common.signals import EXIT_CODE, Terminated, sigterm_raises
from ml.config import Settings

USAGE_ERROR = 2
UNAVAILABLE = 1  # a service the command needs does not answer
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2: the user's input was at fault."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(USAGE_ERROR)


def describe_validation(exc: ValidationError) -> str:
    """Pydantic's errors as one line per setting, never echoing a secret's value."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        secret = any(word in where for word in ("password", "token", "key"))
        got = "" if secret or "input" not in error else f" (got {error['input']!r})"
        problems.append(f"{where}: {error['msg']}{got}")
    return "settings: " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/YAML with the CLI's options on top; bad settings exit 2."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        fail(describe_validation(exc))
    except FileNotFoundError as exc:
        fail(str(exc))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one message and exit 2, never a traceback."""
    from ml.common.tracking import TrackingUnavailable
    from ml.data import DataError
    from ml.registry import RegistryError

    try:
        yield
    except (DataError, RegistryError) as exc:
        fail(str(exc))
    except TrackingUnavailable as exc:  # not the user's input: exit 1, not 2
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(UNAVAILABLE) from None


@contextmanager
def stops_on_sigterm(command: str) -> Iterator[None]:
    """SIGTERM unwinds the block (children stopped, MLflow run KILLED, running trials FAIL),
    then one line says where it stopped, and the exit code is 143 as for a plain SIGTERM."""
    with sigterm_raises():
        try:
            yield
        except Terminated as exc:
            where = f" in stage {exc.stage}" if exc.stage else ""
            err_console.print(
                f"[bold red]error:[/] {command} stopped by SIGTERM{where}: its trial workers "
                "and MLflow writer were stopped, its MLflow run is marked KILLED",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_CODE) from None


def install_app_logs(settings: Settings, service: str) -> Path:
    """This process's log records as ECS JSON in `<log_dir>/<service>.log.json` (Filebeat's
    `mlops-app-logs` input), with every secret of the settings masked."""
    assert settings.log_dir is not None  # set by Settings' defaults
    return install_json_logs(
        settings.log_dir,
        service,
        secrets=settings.secret_values(),
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
