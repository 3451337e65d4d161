"""The production telemetry path for real: NDJSON files -> Filebeat (shipped filebeat.yml) ->
Elasticsearch data streams (our templates).

Filebeat is the OSS 7.17.29 built by scripts/filebeat.sh (tests/fixtures/filebeat.py); the
compose service and the DaemonSet run the official 8.19 image on the same file. What 7.17.29
proves and what it cannot is in docs/observability.md ("Filebeat, tested").

Every test writes its own events, tagged with its own `service.name`, and counts only those.
Files are written by `NdjsonSink`, the sink serving, the collector and the pipeline use. A file
is read once it holds 1 KiB (fingerprint identity), so each dataset gets a few events.
"""

# pytest fixtures are passed by parameter name: pylint: disable=redefined-outer-name
from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from elk import events
from elk.collectors.host import HostCollector
from elk.sinks import NdjsonSink, dumps
from elk.stack import asset_path, install_templates
from tests import kibana_queries
from tests.fixtures.elasticsearch import ElasticsearchServer
from tests.fixtures.filebeat import EsFront, Filebeat

# 900 s: without `make test` first, the first test also builds Filebeat (~6 min, once)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

RunFilebeat = Callable[[Path], Filebeat]
# Generous: Filebeat scans for new files every 10 s and backs off up to 60 s after an outage.
DEADLINE_S = 120.0


@pytest.fixture
def es(elasticsearch_server: ElasticsearchServer) -> Elasticsearch:
    """The session's server, with our templates (idempotent)."""
    client = elasticsearch_server.client()
    install_templates(client)
    return client


@pytest.fixture
def service() -> str:
    """This test's `service.name`: it counts only its own documents."""
    return f"fb-{uuid.uuid4().hex[:10]}"


# --- helpers -------------------------------------------------------------------------------------


def _tag(batch: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    for event in batch:
        event["service"] = {"name": service}
    return batch


def _count(es: Elasticsearch, service: str, index: str = "mlops-*", **term: str) -> int:
    es.indices.refresh(index="mlops-*", ignore_unavailable=True, allow_no_indices=True)
    filters = [{"term": {"service.name": service}}]
    filters += [{"term": {name.replace("__", "."): value}} for name, value in term.items()]
    query = {"bool": {"filter": filters}}
    return int(es.count(index=index, query=query, ignore_unavailable=True)["count"])


def _wait_count(es: Elasticsearch, service: str, expected: int, beat: Filebeat) -> None:
    """Poll until exactly `expected` arrived; more than that fails at once (a double)."""
    deadline = time.monotonic() + DEADLINE_S
    seen = 0
    while time.monotonic() < deadline:
        seen = _count(es, service)
        assert seen <= expected, f"{seen} documents for {expected} events: doubles"
        if seen == expected:
            return
        time.sleep(1)
    raise AssertionError(f"{seen}/{expected} arrived in {DEADLINE_S}s\n{beat.log_tail()}")


def _settled(es: Elasticsearch, service: str, expected: int, quiet_s: float = 5) -> None:
    """Still exactly `expected` after a quiet spell: nothing late, nothing doubled."""
    time.sleep(quiet_s)
    assert _count(es, service) == expected


def _predictions(count: int, model_version: str = "1") -> list[dict[str, Any]]:
    return [
        events.prediction_event(
            model_name="fb-model",
            model_version=model_version,
            prediction_id=uuid.uuid4().hex,
            label=number % 2,
            probability=0.25 + (number % 50) / 100,
            latency_ms=1.0 + number % 7,
            route="/predict" if number % 3 else "/invocations",
            status="success" if number % 10 else "error",
            error=None if number % 10 else "bad row",
        )
        for number in range(count)
    ]


def _collector_samples(samples: int) -> list[dict[str, Any]]:
    """The real host collector (psutil), a few samples so each dataset's file passes 1 KiB."""
    collector = HostCollector()
    collected: list[dict[str, Any]] = []
    for _ in range(samples):
        time.sleep(0.2)
        collected += collector.collect()
    return collected


def _pipeline_events(trials: int) -> list[dict[str, Any]]:
    """What `after_train` emits for a run: stages, trials, the study, the gate's decision."""
    study = "fb-study"
    batch = [
        events.trial_event(
            study_name=study,
            trial_number=number,
            state="PRUNED" if number % 4 == 3 else "COMPLETE",
            value=0.9 + number / 1000,
            params={"family": "logreg", "C": number},
            duration_s=0.5,
            metric="roc_auc",
            model_name="fb-model",
        )
        for number in range(trials)
    ]
    for run in range(3):
        batch += [
            events.stage_event(stage="tune", status="success", duration_s=3.0 + run),
            events.study_event(
                study_name=study,
                best_value=0.95,
                best_params={"C": 1},
                trials_complete=trials - 1,
                trials_pruned=1,
                metric="roc_auc",
                model_name="fb-model",
                duration_s=3.0,
            ),
            events.promotion_event(
                model_name="fb-model",
                challenger_version=str(run + 2),
                champion_version=str(run + 1),
                promoted=run % 2 == 0,
                metric="roc_auc",
                challenger_score=0.95,
                champion_score=0.94,
                reason="test",
            ),
        ]
    return batch


def _panels_for(datasets: set[str]) -> list[kibana_queries.PanelSearch]:
    """The Kibana panels whose query names one of `datasets`."""
    searches = kibana_queries.panel_searches(
        kibana_queries.read_ndjson(asset_path("kibana", "dashboards.ndjson"))
    )
    chosen = []
    for search in searches:
        named = {f["term"].get("event.dataset") for f in search.body["query"]["bool"]["filter"]}
        if named & datasets:
            chosen.append(search)
    return chosen


def _check_panel(es: Elasticsearch, panel: kibana_queries.PanelSearch, service: str) -> None:
    """Kibana's search for the panel, on this test's documents: each field it uses is there,
    and its aggregation has buckets. (Data streams of datasets not written here are missing.)"""
    where = {"index": panel.index, "ignore_unavailable": True}
    mine = [*panel.body["query"]["bool"]["filter"], {"term": {"service.name": service}}]
    for name in panel.fields:
        query = {"bool": {"filter": [*mine, {"exists": {"field": name}}]}}
        assert es.count(**where, query=query)["count"] > 0, (panel.title, name)
    body = {**panel.body, "query": {"bool": {"filter": mine}}}
    assert es.search(**where, **body)["aggregations"]["x"]["buckets"], panel.title


def _registry(beat: Filebeat) -> dict[str, dict[str, Any]]:
    """The newest state per registry key (filestream's log.json is an append-only log of
    `{"op": ...}` / `{"k": key, "v": state}` line pairs)."""
    states: dict[str, dict[str, Any]] = {}
    path = beat.registry / "filebeat" / "log.json"
    lines = path.read_text().splitlines() if path.exists() else []
    for entry in map(json.loads, lines[1::2]):
        if "k" in entry:
            states[entry["k"]] = entry.get("v") or {}
    return states


def _registry_offsets(beat: Filebeat) -> dict[str, int]:
    """The acknowledged offset per file path."""
    offsets = {}
    for state in _registry(beat).values():
        source = (state.get("meta") or {}).get("source")
        if source and state.get("cursor"):
            offsets[source] = int(state["cursor"].get("offset", 0))
    return offsets


def _wait_read_to_end(beat: Filebeat, files: list[Path]) -> None:
    """After a registry loss the count cannot show the re-read (409s add nothing): wait until
    the new registry says each file was read, and acknowledged, to its end."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        offsets = _registry_offsets(beat)
        if all(offsets.get(str(path)) == path.stat().st_size for path in files):
            return
        time.sleep(1)
    raise AssertionError(f"not re-read to the end: {_registry_offsets(beat)}\n{beat.log_tail()}")


# --- the tests -----------------------------------------------------------------------------------


def test_serving_collector_and_pipeline_events_reach_their_data_streams_with_panel_fields(
    es: Elasticsearch, run_filebeat: RunFilebeat, tmp_path: Path, service: str
) -> None:
    """Each dataset's documents in its own data stream, and every Kibana panel over those
    datasets finds its fields and buckets."""
    written = _tag(_predictions(40) + _collector_samples(4) + _pipeline_events(8), service)
    NdjsonSink(tmp_path / "log").write(written)
    beat = run_filebeat(tmp_path / "log")

    _wait_count(es, service, len(written), beat)
    per_dataset = Counter(events.dataset_of(event) for event in written)
    for dataset, expected in per_dataset.items():
        index = events.index_for(dataset)
        assert _count(es, service, index) == expected, dataset
        backing = list(es.indices.get(index=index))
        assert backing and all(name.startswith(f".ds-{index}-") for name in backing), backing

    # _id is event.id (document_id), the same id the bulk sink and `mlops monitor ship` use.
    # Filebeat's document_id moves the field into _id: the shipped document has no event.id.
    sample = written[0]
    (hit,) = es.search(index="mlops-*", query={"ids": {"values": [sample["event"]["id"]]}})["hits"][
        "hits"
    ]
    assert "id" not in hit["_source"]["event"]
    # our host.name survived add_host_metadata (replace_fields: false)
    assert hit["_source"]["host"]["name"] == sample["host"]["name"]

    panels = _panels_for(set(per_dataset))
    assert len(panels) >= 15, [panel.title for panel in panels]
    for panel in panels:
        _check_panel(es, panel, service)


def test_exactly_once_across_a_crash_mid_file_and_a_registry_loss(
    es: Elasticsearch, run_filebeat: RunFilebeat, tmp_path: Path, service: str
) -> None:
    """SIGKILL part-way through a file, then a restart on the same registry, then a restart
    without one: Filebeat re-sends what it had not recorded, and `_id` = event.id turns every
    re-send into a 409, so the count is exact."""
    log_dir = tmp_path / "log"
    sink = NdjsonSink(log_dir)
    sink.write(_tag(_predictions(3000), service))
    beat = run_filebeat(log_dir)
    deadline = time.monotonic() + DEADLINE_S
    while _count(es, service) == 0:  # crash as soon as the file is part-shipped
        assert time.monotonic() < deadline, beat.log_tail()
        time.sleep(0.2)
    beat.stop(signal.SIGKILL)
    print(f"killed with {_count(es, service)}/3000 arrived")

    sink.write(_tag(_predictions(500), service))
    beat.start()  # a new process on the same registry
    _wait_count(es, service, 3500, beat)
    beat.stop()

    beat.forget_registry()
    beat.start()
    _wait_read_to_end(beat, [sink.path_for(events.DATASET_PREDICTION)])
    _settled(es, service, 3500)


def test_rotated_files_are_read_to_their_end_exactly_once(
    es: Elasticsearch, run_filebeat: RunFilebeat, tmp_path: Path, service: str
) -> None:
    """The sink renames x.ndjson -> x.ndjson.1 ... while Filebeat reads it: every line arrives,
    none twice, and the shipped fingerprint identity (not inode) is the one in force."""
    log_dir = tmp_path / "log"
    # a batch of 4 is ~1.8 KiB: the file rotates every second batch
    sink = NdjsonSink(log_dir, max_bytes=3 * 1024, backups=20)
    beat = run_filebeat(log_dir)
    for _ in range(10):
        sink.write(_tag(_predictions(4), service))
        time.sleep(0.5)
    assert Path(f"{sink.path_for(events.DATASET_PREDICTION)}.4").exists(), "no rotation"

    _wait_count(es, service, 40, beat)
    _settled(es, service, 40)
    keys = list(_registry(beat))
    assert keys and all("::fingerprint::" in key for key in keys), keys


def test_a_torn_last_line_is_not_shipped_half(
    es: Elasticsearch, run_filebeat: RunFilebeat, tmp_path: Path, service: str
) -> None:
    """A writer that died mid-line: the half line waits; once completed it ships whole."""
    trials = _tag(_pipeline_events(6)[:6], service)
    lines = [dumps(event) for event in trials]
    whole = "".join(f"{line}\n" for line in lines[:-1])
    torn = lines[-1][: len(lines[-1]) // 2]
    trial_file = NdjsonSink(tmp_path / "log").path_for(events.DATASET_TRIAL)
    trial_file.write_text(whole + torn)
    beat = run_filebeat(tmp_path / "log")

    _wait_count(es, service, 5, beat)
    _settled(es, service, 5)
    # the registry stops at the last newline: the half line is left for later, not consumed
    assert _registry_offsets(beat)[str(trial_file)] == len(whole.encode())

    with trial_file.open("a") as handle:
        handle.write(lines[-1][len(torn) :] + "\n")
    _wait_count(es, service, 6, beat)  # had the half been shipped, this event could not arrive
    last = trials[-1]["event"]["id"]
    (hit,) = es.search(index="mlops-*", query={"ids": {"values": [last]}})["hits"]["hits"]
    assert hit["_source"]["mlops"]["trial"]["number"] == 5
    assert "error" not in hit["_source"]


def test_an_elasticsearch_outage_loses_nothing(
    es: Elasticsearch, es_front: EsFront, run_filebeat: RunFilebeat, tmp_path: Path, service: str
) -> None:
    """Elasticsearch unreachable while events are written: Filebeat retries, and all arrive."""
    sink = NdjsonSink(tmp_path / "log")
    sink.write(_tag(_predictions(10), service))
    beat = run_filebeat(tmp_path / "log")
    _wait_count(es, service, 10, beat)

    es_front.stop()  # Filebeat's Elasticsearch is gone: connections refused
    sink.write(_tag(_predictions(200), service))
    time.sleep(5)
    assert _count(es, service) == 10, "shipped through a stopped server?"
    es_front.start()

    _wait_count(es, service, 210, beat)
    _settled(es, service, 210)
