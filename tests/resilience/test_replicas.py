"""Fault matrix, rows "a serving replica is killed under load" and "a soak": two replicas of
the real Ray Serve app (HAProxy mode, as in production) serving a model registered in a real
MLflow server, loaded by bounded async clients (at most `concurrency` requests in flight, each
with a timeout, so no client can hang).

The soak lasts SOAK_S seconds: 90 in CI, `make soak` sets MLOPS_SOAK_S=600.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from serving.telemetry import QUEUE_SIZE
from tests.fixtures.ray_serve import ServeApp
from tests.resilience.serving_load import (
    LoadResult,
    PeakRss,
    Target,
    report,
    run_load,
    wait_for_replicas,
)

pytestmark = [pytest.mark.resilience, pytest.mark.slow]

KILL_CONCURRENCY = 16
KILL_AFTER_S = 4
AFTER_RESTART_S = 3  # the load goes on this long once both replicas run again
LOAD_BOUND_S = 180  # a bound for the whole load, should the replica never come back
REQUEST_TIMEOUT_S = 10
SOAK_USERS = 50
SOAK_S = float(os.environ.get("MLOPS_SOAK_S", "90"))


@pytest.fixture(scope="module")
def two_replicas(serve_app: ServeApp) -> Iterator[ServeApp]:
    """The session app scaled to 2 replicas for this module, back to 1 after it."""
    serve_app.deploy(serve_app.model.version, num_replicas=2)
    wait_for_replicas(2)
    yield serve_app
    serve_app.deploy(serve_app.model.version, num_replicas=1)
    wait_for_replicas(1)


@pytest.fixture(scope="module")
def target(two_replicas: ServeApp) -> Target:
    """One valid `/predict` record: the schema's example."""
    schema = httpx.get(f"{two_replicas.base_url}/openapi.json", timeout=60).json()
    record = schema["components"]["schemas"]["Record"]["example"]
    return Target("/predict", json.dumps(record).encode())


def test_a_killed_replica_is_restarted_and_costs_at_most_its_in_flight_requests(
    two_replicas: ServeApp, target: Target
) -> None:
    victim, survivor = wait_for_replicas(2)

    async def load_and_kill() -> tuple[LoadResult, float, float]:
        stop = asyncio.Event()
        load = asyncio.create_task(
            run_load(
                two_replicas.base_url,
                target,
                KILL_CONCURRENCY,
                LOAD_BOUND_S,
                REQUEST_TIMEOUT_S,
                stop=stop,
            )
        )
        await asyncio.sleep(KILL_AFTER_S)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        try:
            replaced = await asyncio.to_thread(wait_for_replicas, 2)
            back_at = time.monotonic()
            await asyncio.sleep(AFTER_RESTART_S)
        finally:
            stop.set()
        assert victim.pid not in {process.pid for process in replaced}
        assert survivor.pid in {process.pid for process in replaced}
        # No stuck client: every request ends (each has a timeout; this bounds the whole)
        result = await asyncio.wait_for(load, REQUEST_TIMEOUT_S + 30)
        return result, killed_at, back_at

    result, killed_at, back_at = asyncio.run(load_and_kill())
    after = [t for t in result.finished_at if t > back_at]
    report(
        "replica_killed",
        requests=result.sent,
        failed=result.failed,
        in_flight_bound=KILL_CONCURRENCY,
        outcomes=dict(result.outcomes),
        back_to_2_replicas_s=round(back_at - killed_at, 1),
        ok_after_restart=len(after),
        p99_ms=round(result.percentile_ms(99), 1),
    )
    assert result.failed <= KILL_CONCURRENCY, result.failures[:20]
    assert result.outcomes["200"] == result.sent - result.failed
    assert after, "no request succeeded once the replica was back"


def _health(client: httpx.Client) -> dict[str, int]:
    body = client.get("/health").json()
    return {"queued": body["telemetry_queued"], "dropped": body["telemetry_dropped"]}


def test_soak_50_users_on_2_replicas_fail_nothing(two_replicas: ServeApp, target: Target) -> None:
    processes = wait_for_replicas(2)
    depths: list[int] = []
    dropped: list[int] = []

    async def soak() -> LoadResult:
        load = asyncio.create_task(
            run_load(two_replicas.base_url, target, SOAK_USERS, SOAK_S, REQUEST_TIMEOUT_S)
        )
        with httpx.Client(base_url=two_replicas.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            while not load.done():
                health = await asyncio.to_thread(_health, client)
                depths.append(health["queued"])
                dropped.append(health["dropped"])
                await asyncio.sleep(1)
        return await load

    with PeakRss(processes, interval_s=1) as rss:
        result = asyncio.run(soak())
    # p99 drift: the last tenth of the soak against the first tenth
    tenth = max(1, len(result.latencies_s) // 10)
    first_p99 = float(np.percentile(result.latencies_s[:tenth], 99) * 1000)
    last_p99 = float(np.percentile(result.latencies_s[-tenth:], 99) * 1000)
    report(
        "soak",
        users=SOAK_USERS,
        seconds=SOAK_S,
        requests=result.sent,
        failed=result.failed,
        rps=round(result.sent / SOAK_S, 1),
        p50_ms=round(result.percentile_ms(50), 1),
        p99_ms=round(result.percentile_ms(99), 1),
        p99_first_tenth_ms=round(first_p99, 1),
        p99_last_tenth_ms=round(last_p99, 1),
        rss_first_mb=[round(v, 1) for v in rss.first_mb.values()],
        rss_peak_mb=[round(v, 1) for v in rss.peak_mb.values()],
        rss_growth_mb=round(rss.drift_mb, 1),
        telemetry_queue_max=max(depths),
        telemetry_dropped=max(dropped),
    )
    assert result.failed == 0, result.failures[:20]
    assert depths and max(depths) < QUEUE_SIZE, depths
    assert max(dropped) == 0, "the telemetry queue overflowed"
