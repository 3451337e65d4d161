"""The telemetry path into a real Elasticsearch 8.19 (integ-test-zip via scripts/elasticsearch.sh).

Templates install, the bulk sink delivers an exact count, an Elasticsearch stopped and restarted
mid-stream loses and doubles nothing, and `mlops monitor ship` ships NDJSON files exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from elk import events
from elk.shipper import Shipper
from elk.sinks import ElasticsearchSink, NdjsonSink, build_emitter
from elk.stack import ILM_POLICY, INDEX_TEMPLATE, ilm_available, install_templates
from ml.config import Settings
from tests.fixtures.elasticsearch import ElasticsearchServer, prediction_document

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

PREDICTIONS = events.index_for(events.DATASET_PREDICTION)


@pytest.fixture(scope="module")
def es(elasticsearch_server: ElasticsearchServer) -> Elasticsearch:
    client = elasticsearch_server.client()
    install_templates(client)
    return client


def _settings(tmp_path: Path, server: ElasticsearchServer) -> Settings:
    return Settings(var_dir=tmp_path, elasticsearch_url=server.url)


def _count(es: Elasticsearch, service: str, index: str = PREDICTIONS) -> int:
    es.indices.refresh(index=index)
    return int(es.count(index=index, query={"term": {"service.name": service}})["count"])


def test_templates_install_as_data_streams_with_explicit_mappings(es: Elasticsearch) -> None:
    report = install_templates(es)  # idempotent: a second run just overwrites
    assert report.index_template == INDEX_TEMPLATE and report.data_streams
    assert report.ilm == ilm_available(es)
    if not report.ilm:  # the integ-test-zip has no x-pack ILM
        with pytest.raises(Exception):
            es.ilm.get_lifecycle(name=ILM_POLICY)
    template = es.indices.get_index_template(name=INDEX_TEMPLATE)["index_templates"][0]
    assert template["index_template"]["composed_of"] == report.components
    service = f"templates-{uuid.uuid4().hex[:8]}"
    es.create(
        index=PREDICTIONS,
        id=uuid.uuid4().hex,
        document=prediction_document(service, 1),
        refresh=True,
    )
    backing = next(iter(es.indices.get(index=PREDICTIONS)))
    assert backing.startswith(f".ds-{PREDICTIONS}-")  # a data stream, not a plain index
    mapping = es.indices.get_field_mapping(index=PREDICTIONS, fields="mlops.prediction.*")
    fields = mapping[backing]["mappings"]
    assert fields["mlops.prediction.latency_ms"]["mapping"]["latency_ms"]["type"] == "float"
    assert fields["mlops.prediction.label"]["mapping"]["label"]["type"] == "keyword"


def test_bulk_sink_delivers_an_exact_count(
    es: Elasticsearch, elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    service = f"bulk-{uuid.uuid4().hex[:8]}"
    emitter = build_emitter(_settings(tmp_path, elasticsearch_server), service)
    for number in range(5000):
        emitter.emit(prediction_document(service, number))
    emitter.close()
    sink = emitter.sink
    assert isinstance(sink, ElasticsearchSink)
    assert emitter.dropped == 0 and sink.delivered == 5000 and sink.spooled == 0
    assert _count(es, service) == 5000


def test_stopped_and_restarted_elasticsearch_loses_and_doubles_nothing(
    es: Elasticsearch, elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    service = f"outage-{uuid.uuid4().hex[:8]}"
    emitter = build_emitter(_settings(tmp_path, elasticsearch_server), service)
    sink = emitter.sink
    assert isinstance(sink, ElasticsearchSink)
    sink.retry_after_s = 1.0
    produced = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal produced
        while not stop.is_set():
            for _ in range(4):  # about 400 predictions/s
                emitter.emit(prediction_document(service, produced))
                produced += 1
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(2)
        elasticsearch_server.stop()  # mid-stream: bulk requests are in flight
        time.sleep(3)
        assert sink.spooled > 0, "nothing was spooled while Elasticsearch was down"
        elasticsearch_server.start()
        time.sleep(3)
    finally:
        stop.set()
        producer.join()
        emitter.close()
    outcome = (
        f"produced {produced}, dropped {emitter.dropped}, delivered {sink.delivered}, "
        f"duplicates {sink.duplicates}, rejected {sink.rejected}, spooled {sink.spooled}"
    )
    assert emitter.dropped == 0, outcome
    assert not list(sink.spool_dir.glob("*.ndjson")), "spool not fully replayed: " + outcome
    assert _count(es, service) == produced, outcome
    # Each prediction id exactly once (a double would show as a bucket with doc_count 2).
    es.indices.refresh(index=PREDICTIONS)
    doubled = es.search(
        index=PREDICTIONS,
        size=0,
        query={"term": {"service.name": service}},
        aggs={"ids": {"terms": {"field": "mlops.prediction.id", "min_doc_count": 2, "size": 1}}},
    )
    assert doubled["aggregations"]["ids"]["buckets"] == []


def test_replayed_spool_from_another_process_is_not_doubled(
    es: Elasticsearch, elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    """A spool left behind (crashed writer) whose events partly arrived: replay adds the rest."""
    service = f"spool-{uuid.uuid4().hex[:8]}"
    batch = [prediction_document(service, number) for number in range(300)]
    sink = ElasticsearchSink(elasticsearch_server.client(), tmp_path / "spool", service)
    sink.write(batch[:100])  # these arrived before the "crash"
    spool_file = tmp_path / "spool" / "dead-1-1.ndjson"
    spool_file.write_text("".join(f"{line}\n" for line in map(_json, batch)))
    sink.replay()
    assert not spool_file.exists()
    assert (sink.delivered, sink.duplicates) == (300, 100)
    assert _count(es, service) == 300


def _json(event: dict[str, Any]) -> str:
    from elk.sinks import dumps

    return dumps(event)


def test_ship_sends_ndjson_files_exactly_once(
    es: Elasticsearch, elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    service = f"ship-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path / "log"
    files = NdjsonSink(log_dir, max_bytes=64 * 1024, backups=100)
    for start in range(0, 1000, 100):  # 10 batches: the files rotate on the way
        files.write([prediction_document(service, number) for number in range(start, start + 100)])
    assert len(list(log_dir.glob("mlops-*"))) > 1
    shipper = Shipper(elasticsearch_server.client(), log_dir)
    first = shipper.ship_once()
    assert (first.delivered, first.duplicates, first.complete) == (1000, 0, True)
    files.write([prediction_document(service, number) for number in range(1000, 1200)])
    second = Shipper(elasticsearch_server.client(), log_dir).ship_once()  # offsets from disk
    assert (second.delivered, second.duplicates) == (200, 0)
    (log_dir / ".ship-offsets.json").unlink()  # lost offsets: everything again, nothing new
    third = Shipper(elasticsearch_server.client(), log_dir).ship_once()
    assert (third.delivered, third.duplicates) == (0, 1200)
    assert _count(es, service) == 1200


def test_monitor_setup_and_ship_cli(
    elasticsearch_server: ElasticsearchServer, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "ELASTICSEARCH_URL": elasticsearch_server.url,
        "MLOPS_VAR_DIR": str(tmp_path),
    }
    env.pop("KIBANA_URL", None)
    mlops = [str(Path(sys.executable).parent / "mlops")]
    setup = subprocess.run(
        [*mlops, "monitor", "setup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr
    assert "index template mlops -> data streams" in setup.stdout
    assert "KIBANA_URL not set" in setup.stdout
    missing = subprocess.run(
        [*mlops, "monitor", "ship", "--log-dir", str(tmp_path / "nope")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert missing.returncode == 2 and "--log-dir" in missing.stderr
    assert "Traceback" not in missing.stderr
    from tests.fixtures.mlflow_server import free_port

    no_kibana = {**env, "KIBANA_URL": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    kibana = subprocess.run(
        [*mlops, "monitor", "setup"],
        env=no_kibana,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert kibana.returncode == 1 and "Kibana at" in kibana.stderr
    assert "Traceback" not in kibana.stderr
    unset = {**env}
    unset.pop("ELASTICSEARCH_URL")
    no_es = subprocess.run(
        [*mlops, "monitor", "setup"],
        env=unset,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert no_es.returncode == 2 and "ELASTICSEARCH_URL" in no_es.stderr
