"""The disk under the telemetry files fills up while a replica serves.

The fault is real: a 512 KiB tmpfs is mounted over the replica's log directory and a filler
file takes all but a few KiB of it, so the NDJSON sink's next `write()` stores part of its batch
and the one after fails with ENOSPC. Mounting needs root (CI and this machine run as root);
where `mount` is refused the test is skipped and says so. The components are the replica's own:
`ModelService` with the real `PredictionTelemetry` (emitter thread, NDJSON sink); no Ray needed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ml.config import Settings
from serving.schemas import ServingOptions
from serving.service import ModelService
from serving.telemetry import PredictionTelemetry
from tests.unit.serving_support import Registry, demo_model, demo_rows

pytestmark = [
    pytest.mark.resilience,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount needs root"),
]

FREE_WHEN_FULL = 8 * 1024  # less than one request's events: the next write is cut short


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs mounted at tmp_path/log, unmounted after the test."""
    mount_point = tmp_path / "log"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(mount_point: Path) -> Path:
    """All but FREE_WHEN_FULL bytes of the filesystem taken by one file."""
    stats = os.statvfs(mount_point)
    filler = mount_point / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - FREE_WHEN_FULL))
    return filler


def until(condition: Callable[[], bool], what: str, polls: int = 600) -> None:
    """Poll the telemetry thread's progress (it writes in the background)."""
    for _ in range(polls):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


# Written once at start-up or once a minute, not per request: not in the counts below.
NOT_PER_REQUEST = ("model_load", "serving_health")


def ndjson_lines(log_dir: Path) -> list[str]:
    """The per-request events' lines; every NDJSON file is checked for a torn last line."""
    lines: list[str] = []
    for path in sorted(log_dir.glob("*.ndjson*")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a torn line"
        if not any(kind in path.name for kind in NOT_PER_REQUEST):
            lines += data.decode().splitlines()
    return lines


def serve_requests(service: ModelService, count: int, rows: int = 40) -> None:
    """What the `/invocations` route does per request: score, answer, hand to telemetry."""
    model = service.require_model()
    frame = demo_rows(rows).to_numpy(dtype=float)
    for index in range(count):
        scored = model.score_alone(frame)
        assert not isinstance(scored, Exception), scored
        ids = [f"r{index}-{row}" for row in range(rows)]
        service.scored(scored, ids, "/invocations", started=time.perf_counter(), rows=frame)


def test_a_full_disk_drops_telemetry_visibly_and_writing_resumes(small_disk: Path) -> None:
    settings = Settings(var_dir=small_disk.parent / "var", log_dir=small_disk)
    telemetry = PredictionTelemetry(settings, "mlops-serving")
    service = ModelService(settings, Registry({("demo", "1"): demo_model("1")}), telemetry)
    try:
        asyncio.run(service.apply(ServingOptions(model_uri="models:/demo/1")))
        health = lambda: service.health({}).body  # noqa: E731 - read again at each poll

        serve_requests(service, 2)
        until(lambda: len(ndjson_lines(small_disk)) == 80, "the first 80 events written")
        assert health()["telemetry_dropped"] == 0

        filler = fill(small_disk)
        serve_requests(service, 3)  # a short write, then ENOSPC: scoring goes on regardless
        until(lambda: health()["telemetry_dropped"] == 120, "120 events counted as dropped")
        assert health()["status"] == "ready"
        lines = ndjson_lines(small_disk)  # no torn line: the short write was cut off again
        assert len(lines) == 80 and all(json.loads(line) for line in lines)

        filler.unlink()  # space returns
        serve_requests(service, 1)
        until(lambda: len(ndjson_lines(small_disk)) == 120, "writing resumed")
        assert health()["telemetry_dropped"] == 120
        assert all(json.loads(line) for line in ndjson_lines(small_disk))
    finally:
        telemetry.close()
        gc.unfreeze()  # a load freezes what exists, as in a replica
