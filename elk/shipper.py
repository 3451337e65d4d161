"""`mlops monitor ship`: bulk-ship the NDJSON files to Elasticsearch, for hosts without Filebeat.

Offsets are remembered per file identity (device + inode), so a rotated file (`x.ndjson` ->
`x.ndjson.1`) is not shipped twice, and only whole lines are taken (a line being written is
left for the next pass). A chunk is committed to the offsets only once Elasticsearch settled
every document in it; a chunk cut short is shipped again and its delivered documents come back
409 (same `_id`), so a crash or an outage never loses or doubles an event.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from elasticsearch import Elasticsearch

from elk.sinks import NDJSON_SUFFIX, ship

log = logging.getLogger(__name__)

OFFSETS_FILE = ".ship-offsets.json"
CHUNK_LINES = 2000


@dataclass
class ShipReport:
    files: int = 0
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    unparsable: int = 0
    complete: bool = True


def ndjson_files(log_dir: Path) -> list[Path]:
    """Our telemetry files, rotated ones included, oldest data first."""
    found = [path for path in log_dir.glob(f"mlops-*{NDJSON_SUFFIX}*") if path.is_file()]
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


class Shipper:
    def __init__(self, client: Elasticsearch, log_dir: Path, state_path: Path | None = None):
        self.client = client
        self.log_dir = Path(log_dir)
        self.state_path = state_path or self.log_dir / OFFSETS_FILE
        self.offsets: dict[str, int] = self._load_offsets()

    def _load_offsets(self) -> dict[str, int]:
        try:
            loaded: dict[str, int] = json.loads(self.state_path.read_text())
            return loaded
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            log.warning(
                "%s is corrupt; shipping from the start (duplicates answer 409)", self.state_path
            )
            return {}

    def _save_offsets(self) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.offsets, indent=1, sort_keys=True))
        os.replace(temporary, self.state_path)

    def ship_once(self) -> ShipReport:
        """One pass over every file; stops early (complete=False) if Elasticsearch goes away."""
        report = ShipReport()
        live_keys = set()
        for path in ndjson_files(self.log_dir):
            key = _identity(path)
            live_keys.add(key)
            report.files += 1
            if not self._ship_file(path, key, report):
                report.complete = False
                break
        if report.complete:  # forget files that rotated out of existence
            self.offsets = {key: value for key, value in self.offsets.items() if key in live_keys}
        self._save_offsets()
        return report

    def _ship_file(self, path: Path, key: str, report: ShipReport) -> bool:
        offset = self.offsets.get(key, 0)
        with path.open("rb") as handle:
            handle.seek(offset)
            while True:
                lines = _whole_lines(handle, CHUNK_LINES)
                if not lines:
                    return True
                chunk = _parse(lines, path, report)
                outcome = ship(self.client, chunk)
                report.delivered += outcome.delivered
                report.duplicates += outcome.duplicates
                report.rejected += outcome.rejected
                if outcome.unsent:
                    return False
                offset += sum(len(line) for line in lines)
                self.offsets[key] = offset
                self._save_offsets()


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def _whole_lines(handle: BinaryIO, limit: int) -> list[bytes]:
    """Up to `limit` newline-terminated lines; a trailing partial line is left unread."""
    lines: list[bytes] = []
    while len(lines) < limit:
        position = handle.tell()
        line = handle.readline()
        if not line:
            break
        if not line.endswith(b"\n"):
            handle.seek(position)
            break
        lines.append(line)
    return lines


def _parse(lines: list[bytes], path: Path, report: ShipReport) -> list[dict[str, Any]]:
    parsed = []
    for line in lines:
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            report.unparsable += 1
            log.error("%s: a line is not JSON; skipped", path)
    return parsed
