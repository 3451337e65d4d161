"""ElastAlert 2's global config, rendered from the project's settings (ml.config).

ElastAlert reads plain YAML and does not expand variables, so the Elasticsearch address and the
`SMTP_*` settings every other mail of the project uses (ml.notify) are written into a config in a
private run directory; the SMTP password goes to a separate auth file (mode 0600), never into
the config, a log or an event. Each rule file inherits these globals (smtp_host, email, ...).

    python -m elk.alerts.elastalert_config RUN_DIR   # prints RUN_DIR/config.yaml
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from ml.config import Settings, get_settings

RULES_DIR = Path(__file__).resolve().parent / "rules"
# Not under mlops-*: that index template makes data streams only, ElastAlert needs indices.
WRITEBACK_INDEX = "elastalert-mlops"


class AlertConfigError(ValueError):
    """A setting ElastAlert needs is missing or malformed; the message names it."""


def _es_address(url: str | None) -> dict[str, object]:
    if not url:
        raise AlertConfigError("ELASTICSEARCH_URL is not set: ElastAlert needs an Elasticsearch")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertConfigError(f"ELASTICSEARCH_URL must be http(s)://host[:port], not {url!r}")
    address: dict[str, object] = {
        "es_host": parts.hostname,
        "es_port": parts.port or (443 if parts.scheme == "https" else 9200),
        "use_ssl": parts.scheme == "https",
    }
    if parts.path.strip("/"):
        address["es_url_prefix"] = parts.path.strip("/")
    return address


def _es_credentials(settings: Settings) -> dict[str, str]:
    if settings.elasticsearch_api_key is not None:
        return {"es_api_key": settings.elasticsearch_api_key.get_secret_value()}
    if settings.elasticsearch_username and settings.elasticsearch_password is not None:
        return {
            "es_username": settings.elasticsearch_username,
            "es_password": settings.elasticsearch_password.get_secret_value(),
        }
    return {}


def _smtp(settings: Settings, run_dir: Path) -> dict[str, object]:
    if not settings.smtp_host:
        raise AlertConfigError("SMTP_HOST is not set: the alerts are sent by email")
    if not settings.smtp_to:
        raise AlertConfigError("SMTP_TO is not set: the alerts need at least one recipient")
    smtp: dict[str, object] = {
        "smtp_host": settings.smtp_host,
        "smtp_port": settings.smtp_port,
        "from_addr": settings.smtp_from,
        "email": list(settings.smtp_to),
    }
    if settings.smtp_user and settings.smtp_password is not None:
        auth_file = run_dir / "smtp-auth.yaml"
        auth = {"user": settings.smtp_user, "password": settings.smtp_password.get_secret_value()}
        _write_private(auth_file, yaml.safe_dump(auth))
        smtp["smtp_auth_file"] = str(auth_file)
    return smtp


def _write_private(path: Path, text: str) -> None:
    """Owner-only from creation: the file may hold a secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def render(
    run_dir: Path,
    settings: Settings | None = None,
    *,
    rules_dir: Path = RULES_DIR,
    run_every_s: int = 60,
    buffer_time_s: int = 900,
    writeback_index: str = WRITEBACK_INDEX,
) -> Path:
    """Write `run_dir/config.yaml` for ElastAlert from `settings`; returns its path."""
    settings = settings or get_settings()
    if not rules_dir.is_dir():
        raise AlertConfigError(f"no ElastAlert rules folder at {rules_dir}")
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config: dict[str, object] = {
        "rules_folder": str(rules_dir),
        "run_every": {"seconds": run_every_s},
        "buffer_time": {"seconds": buffer_time_s},
        "writeback_index": writeback_index,
        "alert_time_limit": {"days": 1},
        **_es_address(settings.elasticsearch_url),
        **_es_credentials(settings),
        **_smtp(settings, run_dir),
    }
    path = run_dir / "config.yaml"
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("run_dir", type=Path, help="where config.yaml (and the auth file) go")
    parser.add_argument("--run-every-s", type=int, default=60)
    parser.add_argument("--buffer-time-s", type=int, default=900)
    parser.add_argument("--rules-dir", type=Path, default=RULES_DIR)
    parser.add_argument("--writeback-index", default=WRITEBACK_INDEX)
    args = parser.parse_args(argv)
    try:
        path = render(
            args.run_dir,
            rules_dir=args.rules_dir,
            run_every_s=args.run_every_s,
            buffer_time_s=args.buffer_time_s,
            writeback_index=args.writeback_index,
        )
    except AlertConfigError as exc:
        parser.exit(2, f"elastalert config: {exc}\n")
    print(path)


if __name__ == "__main__":
    main()
