"""Telemetry benchmark: bulk throughput into Elasticsearch, the cost of `Emitter.emit`, and the
host collector's CPU at 1 Hz. Prints tables with the targets and measured/target ratios.

    make bench-telemetry                      # starts a throw-away Elasticsearch on a free port
    ELASTICSEARCH_URL=http://127.0.0.1:9200 .venv/bin/python benchmarks/telemetry.py

Targets (issue 3): bulk >= 10,000 docs/s; enqueue p99 <= 50 us; collector <= 1% of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from elk import events
from elk.collectors.host import HostCollector
from elk.sinks import Emitter, NdjsonSink, ship
from elk.stack import install_templates
from ml.common.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_BULK_DOCS_S = 10_000
TARGET_ENQUEUE_P99_US = 50.0
TARGET_COLLECTOR_CORE = 0.01


@contextmanager
def elasticsearch(url: str | None) -> Iterator[str]:
    """The given server, or a throw-away one from scripts/elasticsearch.sh."""
    if url:
        yield url
        return
    home = Path(tempfile.mkdtemp(prefix="mlops-es-bench-"))
    home.chmod(0o755)
    port = free_port()
    env = {
        **os.environ,
        "ES_PORT": str(port),
        "ES_TRANSPORT_PORT": str(free_port()),
        "ES_HOME_DIR": str(home / "es"),
        "VAR_DIR": str(home),
    }
    script = str(REPO_ROOT / "scripts" / "elasticsearch.sh")
    subprocess.run([script, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _predictions(count: int, service: str) -> list[dict[str, Any]]:
    made = []
    for number in range(count):
        event = events.prediction_event(
            model_name="bench",
            model_version="1",
            prediction_id=str(number),
            label=number % 2,
            probability=0.75,
            latency_ms=1.5,
            route="/predict",
            features={"f1": 1.0, "f2": 2.0, "f3": "a"},
        )
        event["service"] = {"name": service}
        made.append(event)
    return made


def bench_bulk(client: Elasticsearch, docs: int) -> list[tuple[str, float, float]]:
    """docs/s of `ship()` at several chunk sizes, and of the whole emitter path."""
    rows = []
    ship(client, _predictions(5000, "bench-warmup"))  # JIT, data stream creation
    for chunk, parallel in ((500, 1), (2000, 1), (5000, 1), (2000, 2), (5000, 2)):
        batch = _predictions(docs, f"bench-{uuid.uuid4().hex[:6]}")
        started = time.perf_counter()
        outcome = ship(client, batch, chunk_size=chunk, parallel=parallel)
        elapsed = time.perf_counter() - started
        assert outcome.delivered == docs and not outcome.unsent, outcome
        rows.append((f"ship(), chunk {chunk}, {parallel} in flight", docs / elapsed, elapsed))
    from elk.sinks import ElasticsearchSink

    spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    sink = ElasticsearchSink(client, spool, "bench")
    emitter = Emitter(sink, "bench", queue_size=docs + 1)  # default batch size
    batch = _predictions(docs, f"bench-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    for event in batch:
        emitter.emit(event)
    emitter.close(timeout_s=600)
    elapsed = time.perf_counter() - started
    assert sink.delivered == docs and emitter.dropped == 0
    rows.append(("Emitter -> ElasticsearchSink (emit..close)", docs / elapsed, elapsed))
    shutil.rmtree(spool, ignore_errors=True)
    return rows


def bench_enqueue(count: int, client: Elasticsearch | None) -> list[tuple[str, np.ndarray]]:
    """Per-call cost of `emit` while the sink drains concurrently (paced bursts, as requests)."""
    results = []
    with tempfile.TemporaryDirectory() as log_dir:
        sinks: list[tuple[str, Any]] = [("NDJSON sink", NdjsonSink(Path(log_dir)))]
        if client is not None:
            from elk.sinks import ElasticsearchSink

            sinks.append(("Elasticsearch sink", ElasticsearchSink(client, Path(log_dir) / "sp")))
        for name, sink in sinks:
            emitter = Emitter(sink, "bench")
            batch = _predictions(count, "bench-enqueue")
            costs = np.empty(count)
            clock = time.perf_counter_ns
            for index, event in enumerate(batch):
                started = clock()
                emitter.emit(event)
                costs[index] = clock() - started
                if index % 100 == 99:
                    time.sleep(0.002)  # ~50,000 events/s offered, in bursts of 100
            emitter.close(timeout_s=600)
            results.append((f"emit() with {name} (dropped {emitter.dropped})", costs / 1000))
        build = np.empty(count // 10)
        for index in range(len(build)):
            started = time.perf_counter_ns()
            events.prediction_event(
                model_name="bench",
                model_version="1",
                prediction_id="x",
                label=1,
                probability=0.5,
                latency_ms=1.0,
                route="/predict",
            )
            build[index] = time.perf_counter_ns() - started
        results.append(("prediction_event() build (for reference)", build / 1000))
    return results


def bench_collector(seconds: int) -> tuple[float, float, int]:
    """CPU seconds per wall second of the host collector + emitter + NDJSON sink at 1 Hz."""
    with tempfile.TemporaryDirectory() as log_dir:
        emitter = Emitter(NdjsonSink(Path(log_dir)), "bench-monitor")
        collector = HostCollector()
        cpu_started, wall_started = time.process_time(), time.monotonic()
        samples = 0
        for tick in range(seconds):
            for event in collector.collect():
                emitter.emit(event)
            samples += 1
            time.sleep(max(0.0, wall_started + tick + 1 - time.monotonic()))
        emitter.close()
        cpu = time.process_time() - cpu_started
        wall = time.monotonic() - wall_started
    return cpu, wall, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000, help="documents per bulk run")
    parser.add_argument("--emits", type=int, default=50_000, help="emit() calls to time")
    parser.add_argument("--collector-seconds", type=int, default=30)
    args = parser.parse_args()

    with elasticsearch(os.environ.get("ELASTICSEARCH_URL")) as url:
        client = Elasticsearch(url, request_timeout=60)
        install_templates(client)
        print(f"\nBulk throughput into Elasticsearch at {url} ({args.docs:,} docs per run)")
        print(f"{'path':<45} {'docs/s':>10} {'seconds':>8} {'vs 10k target':>14}")
        for name, rate, elapsed in bench_bulk(client, args.docs):
            print(f"{name:<45} {rate:>10,.0f} {elapsed:>8.2f} {rate / TARGET_BULK_DOCS_S:>13.2f}x")

        print(f"\nEnqueue cost, {args.emits:,} emit() calls (microseconds)")
        print(f"{'measured':<52} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>8} {'p99/50us':>9}")
        for name, costs in bench_enqueue(args.emits, client):
            p50, p99, p999 = np.percentile(costs, [50, 99, 99.9])
            print(
                f"{name:<52} {p50:>7.2f} {p99:>7.2f} {p999:>7.2f} {costs.max():>8.1f} "
                f"{p99 / TARGET_ENQUEUE_P99_US:>8.2f}x"
            )

    cpu, wall, samples = bench_collector(args.collector_seconds)
    share = cpu / wall
    print(f"\nHost collector at 1 Hz: {samples} samples in {wall:.1f}s")
    print(f"{'CPU seconds':<20} {'share of one core':>18} {'vs 1% target':>13}")
    print(f"{cpu:<20.3f} {share:>17.2%} {share / TARGET_COLLECTOR_CORE:>12.2f}x")


if __name__ == "__main__":
    main()
