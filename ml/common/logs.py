"""Application logs as ECS JSON lines Filebeat ships: `<log dir>/<service>.log.json`.

`install_json_logs` puts one rotating file handler with `ecs_logging.StdlibFormatter` on the root
logger, so every record of the process (ours and the libraries') becomes one ECS object per
line, tagged with `service.name` and `event.dataset: mlops.app` (elk/filebeat/filebeat.yml ships
it into the `mlops-mlops.app` data stream). Structured fields ride on `extra=`, dotted ECS names:
`log.info("...", extra={"mlops.model.version": "3"})`.

The console is left as it was: the handler writes only the file, and where the root logger had
no handler, Python's last-resort stderr handler (warnings and errors, message only) is kept in
place, since any handler on the root would silence it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import ecs_logging

APP_DATASET = "mlops.app"
LOG_SUFFIX = ".log.json"
MASK = "********"
# Shorter values could be common words; no secret of ours is this short.
MIN_SECRET_LENGTH = 4


def log_file(log_dir: Path, service: str) -> Path:
    """Where a service's application log goes."""
    return log_dir / f"{service}{LOG_SUFFIX}"


class EcsJsonFormatter(ecs_logging.StdlibFormatter):
    """ecs-logging's formatter with an `event.id` per record (Filebeat's document id: a line
    re-sent after a crash is a 409, not a double, as for the telemetry) and the secrets given
    masked wherever they appear (message, extras, exception text)."""

    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        # log.original repeats `message`; the thread name adds nothing to the pid.
        super().__init__(
            extra={"service.name": service, "event.dataset": APP_DATASET},
            exclude_fields=("log.original", "process.thread.name"),
        )
        self._secrets = _secret_forms(secrets)

    def format_to_ecs(self, record: logging.LogRecord) -> dict[str, Any]:
        try:
            result: dict[str, Any] = super().format_to_ecs(record)
        except TypeError:
            # An extra field the formatter also derives (`error.type` beside exc_info): the
            # derived one wins rather than the record being lost.
            result = super().format_to_ecs(_without_derived_extras(record))
        result.setdefault("event", {})["id"] = uuid.uuid4().hex
        return result

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        return line


def _without_derived_extras(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of the record without the extras under the fields ecs-logging fills itself."""
    derived = ("error.", "log.", "process.", "ecs.")
    kept = {key: value for key, value in vars(record).items() if not key.startswith(derived)}
    return logging.makeLogRecord(kept)


def _secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as it is, and as it appears inside a JSON string (quotes, backslashes
    escaped); longest first, so a secret containing another is masked whole."""
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            forms.update({secret, json.dumps(secret)[1:-1]})
    return sorted(forms, key=len, reverse=True)


class EcsFileHandler(RotatingFileHandler):
    """The installed handler (a type of its own, so a second install finds and replaces it)."""


def install_json_logs(  # pylint: disable=too-many-arguments
    log_dir: Path,
    service: str,
    *,
    secrets: Iterable[str] = (),
    level: int = logging.INFO,
    max_bytes: int = 50 * 1024 * 1024,
    backups: int = 5,
) -> Path:
    """Send every log record of this process, from `level` up, to `<log_dir>/<service>.log.json`
    as ECS JSON; returns that path. Once per process: a second call for the same file keeps the
    handler, for another file (another service) replaces it."""
    path = log_file(log_dir, service)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, EcsFileHandler):
            if handler.baseFilename == os.path.abspath(path):  # how the handler keeps it
                return path
            root.removeHandler(handler)
            handler.close()
    if not root.handlers and logging.lastResort is not None:
        root.addHandler(logging.lastResort)  # the console as before: see the module docstring
    log_dir.mkdir(parents=True, exist_ok=True)
    # delay: no empty file for a command that logs nothing
    handler = EcsFileHandler(path, maxBytes=max_bytes, backupCount=backups, delay=True)
    handler.setLevel(level)
    handler.setFormatter(EcsJsonFormatter(service, secrets))
    root.addHandler(handler)
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    return path


def log_to_console(fmt: str, level: int = logging.INFO) -> None:
    """`logging.basicConfig(level=level, format=fmt)` as if the JSON file handler were not
    there (basicConfig does nothing on a root logger with a handler): console lines unless the
    process already has a handler of its own (a test runner's)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, EcsFileHandler) or h is logging.lastResort]
    if len(ours) < len(root.handlers):
        return
    if logging.lastResort in ours:
        root.removeHandler(logging.lastResort)  # replaced by the real console lines
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(fmt))
    root.addHandler(console)
    root.setLevel(level)
