"""What the serving rows of the fault matrix share: a bounded async load, the replicas'
processes and their memory, and one figure line per measurement.

The load is an httpx.AsyncClient with `concurrency` workers, each sending its next request
once the last one answered, with a per-request timeout: at most `concurrency` requests are
ever in flight, and none can hang for longer than the timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPLICA_TITLE = "ServeReplica:model:ModelServer"  # Ray names a replica's process after it


@dataclass
class LoadResult:
    """What a load run saw: latency per answered request, outcomes by status or error."""

    latencies_s: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.sent - self.outcomes["200"]

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else 0.0


@dataclass(frozen=True)
class Target:
    """One request the load repeats."""

    path: str
    body: bytes
    content_type: str = "application/json"


async def run_load(
    base_url: str,
    target: Target,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """`concurrency` closed-loop clients for `duration_s` (or until `stop` is set)."""
    result = LoadResult()
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": target.content_type}
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                started = time.monotonic()
                try:
                    response = await client.post(target.path, content=target.body, headers=headers)
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                    result.failures.append(f"{time.monotonic():.3f} {outcome}: {exc}")
                now = time.monotonic()
                result.outcomes[outcome] += 1
                if outcome == "200":
                    result.latencies_s.append(now - started)
                    result.finished_at.append(now)
                elif not outcome.isdigit() or int(outcome) >= 400:
                    result.failures.append(f"{now:.3f} {outcome}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def replica_processes() -> list[psutil.Process]:
    """The Serve replicas of this test session's Ray cluster: descendants of this process
    (other sessions on the machine run replicas with the same title)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if REPLICA_TITLE in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for_replicas(count: int, timeout_s: float = 120.0) -> list[psutil.Process]:
    """Block until `count` replica processes run and Serve reports them all RUNNING."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes = replica_processes()
        status = serve.status().applications.get("model")
        running = 0
        if status is not None:
            running = status.deployments["ModelServer"].replica_states.get("RUNNING", 0)
        if len(processes) == count and running == count:
            return processes
        time.sleep(0.2)
    raise AssertionError(f"not {count} running replicas after {timeout_s} s: {processes}")


class PeakRss:
    """Samples the replicas' resident memory every `interval_s` on a thread: first and peak
    value per process, in MB."""

    def __init__(self, processes: list[psutil.Process], interval_s: float = 0.1) -> None:
        self._processes = processes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.first_mb: dict[int, float] = {}
        self.peak_mb: dict[int, float] = {}
        self.last_mb: dict[int, float] = {}

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        for process in self._processes:
            try:
                rss_mb = process.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
            self.first_mb.setdefault(process.pid, rss_mb)
            self.peak_mb[process.pid] = max(self.peak_mb.get(process.pid, 0.0), rss_mb)
            self.last_mb[process.pid] = rss_mb

    @property
    def growth_mb(self) -> float:
        """The largest rise of any replica over its first sample."""
        return max(self.peak_mb[pid] - self.first_mb[pid] for pid in self.peak_mb)

    @property
    def drift_mb(self) -> float:
        """The largest change of any replica's RSS from the first to the last sample."""
        return max(self.last_mb[pid] - self.first_mb[pid] for pid in self.last_mb)


def report(row: str, **figures: Any) -> None:
    """One measured line: printed (`pytest -s` shows it) and appended, as JSON, to
    $REPORTS_DIR/resilience.ndjson when REPORTS_DIR is set (docs/reliability.md's figures)."""
    line = {"row": row, **figures}
    print(f"\nRESILIENCE {json.dumps(line)}")
    reports = os.environ.get("REPORTS_DIR")
    if reports:
        Path(reports).mkdir(parents=True, exist_ok=True)
        with open(Path(reports) / "resilience.ndjson", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
