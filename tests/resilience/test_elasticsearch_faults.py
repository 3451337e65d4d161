"""Elasticsearch answers 429, then 503, then too slowly: the bulk sink's spool holds.

The shipping path that remains ours is `elk.sinks.ElasticsearchSink` (the app's bulk shipper:
`ELASTICSEARCH_URL` set); Filebeat retries on its own and its disk is the rotated NDJSON files
(docs/observability.md). The faults are injected by a real HTTP proxy
(tests/fixtures/es_fault_proxy.py) in front of the session's real Elasticsearch: 429s (the
bulk helper retries them twice, then the sink spools), 503s, then bulk answers held past the
client's timeout after Elasticsearch indexed them. The spool is bounded (refuse-new): what
does not fit is counted in `failed`, never silently lost. Afterwards: Elasticsearch holds every
event that was not refused, each exactly once (409s for the re-sent ones), and the spool never
went past its bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from elk import events
from elk.sinks import ElasticsearchSink, build_client, dumps
from elk.stack import install_templates
from ml.config import Settings
from tests.fixtures.elasticsearch import ElasticsearchServer, prediction_document
from tests.fixtures.es_fault_proxy import FaultProxy
from tests.resilience.serving_load import report

pytestmark = [pytest.mark.resilience, pytest.mark.timeout(300)]

PREDICTIONS = events.index_for(events.DATASET_PREDICTION)
BATCH = 50  # events per write, as the emitter hands a batch to the sink
CLIENT_TIMEOUT_S = 3.0
HELD_S = 5.0  # the slow phase holds bulk answers this long: past the client's timeout


@pytest.fixture
def proxy(elasticsearch_server: ElasticsearchServer) -> Iterator[FaultProxy]:
    client = elasticsearch_server.client()
    install_templates(client)
    # the data stream exists before the clock starts: its creation is not a fault
    client.index(index=PREDICTIONS, document=prediction_document("warm-up", 0), op_type="create")
    running = FaultProxy(elasticsearch_server.url, delay_s=HELD_S).start()
    try:
        yield running
    finally:
        running.stop()


class Run:
    """Writes batches through the sink, checking the spool's bound after each step."""

    def __init__(self, sink: ElasticsearchSink, service: str) -> None:
        self.sink = sink
        self.service = service
        self.written = 0
        self.peak_spool = 0

    def write(self, batches: int) -> None:
        for _ in range(batches):
            batch = [prediction_document(self.service, self.written + n) for n in range(BATCH)]
            self.written += BATCH
            self.sink.write(batch)
            self.check_bound()

    def tick(self) -> None:
        time.sleep(self.sink.retry_after_s)
        self.sink.tick()
        self.check_bound()

    def check_bound(self) -> None:
        size = self.sink.spool_bytes()
        self.peak_spool = max(self.peak_spool, size)
        assert size <= self.sink.max_spool_bytes, f"spool {size} past {self.sink.max_spool_bytes}"


def stored_ids(es: Elasticsearch, service: str) -> list[str]:
    es.indices.refresh(index=PREDICTIONS)
    found = es.search(
        index=PREDICTIONS,
        size=10_000,
        query={"term": {"service.name": service}},
        source=["mlops.prediction.id"],
    )
    return [hit["_source"]["mlops"]["prediction"]["id"] for hit in found["hits"]["hits"]]


def test_429_503_and_timeouts_lose_nothing_uncounted_and_double_nothing(
    proxy: FaultProxy, elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    service = f"esfault-{uuid.uuid4().hex[:8]}"
    batch_bytes = len("".join(dumps(prediction_document(service, n)) + "\n" for n in range(BATCH)))
    sink = ElasticsearchSink(
        build_client(Settings(elasticsearch_url=proxy.url), CLIENT_TIMEOUT_S),
        tmp_path / "spool",
        service,
        retry_after_s=0.3,
        max_spool_bytes=int(batch_bytes * 3.5),  # room for three batches
    )
    run = Run(sink, service)
    started = time.monotonic()

    run.write(2)  # Elasticsearch healthy

    proxy.mode = "429"
    run.write(2)
    proxy.mode = "503"
    run.tick()  # a replay attempt: the probe gets 503
    run.write(3)  # the spool fills: what does not fit is refused and counted
    assert sink.failed > 0, "the spool never reached its bound"

    proxy.mode = "slow"  # bulks go through, their answers come after the client gave up
    run.tick()
    run.write(1)
    slow_bulks = proxy.answered["slow"]

    proxy.mode = "forward"
    deadline = time.monotonic() + 30
    while list(sink.spool_dir.glob("*.ndjson")) and time.monotonic() < deadline:
        run.tick()
    elapsed = time.monotonic() - started

    ids = stored_ids(elasticsearch_server.client(), service)
    figures = {
        "written": run.written,
        "delivered": sink.delivered,
        "duplicates_409": sink.duplicates,
        "refused_spool_full": sink.failed,
        "rejected": sink.rejected,
        "in_elasticsearch": len(ids),
        "distinct_in_elasticsearch": len(set(ids)),
        "spool_bound_bytes": sink.max_spool_bytes,
        "spool_peak_bytes": run.peak_spool,
        "answered": dict(proxy.answered),
        "seconds": round(elapsed, 1),
    }
    report("elasticsearch 429/503/timeout", **figures)
    assert not list(sink.spool_dir.glob("*.ndjson")), f"spool not replayed: {figures}"
    assert proxy.answered["429"] and proxy.answered["503"] and slow_bulks, figures
    assert len(ids) == len(set(ids)), f"an event is stored twice: {figures}"
    assert len(ids) == run.written - sink.failed, f"lost beyond the counted drops: {figures}"
    # the held bulks were indexed although the client timed out: re-sent, they came back 409;
    # every stored event was acknowledged once, either way
    assert sink.duplicates > 0, figures
    assert sink.delivered + sink.duplicates == len(ids) and sink.rejected == 0, figures
