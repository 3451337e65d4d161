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

import asyncio
import builtins
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pytest
from elasticsearch import Elasticsearch
from ray.serve._private.common import ServeComponentType
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve._private.logging_utils import configure_component_logger
from ray.serve.schema import LoggingConfig
from typer.testing import CliRunner

from elk import events
from elk.collectors.host import HostCollector
from elk.sinks import NdjsonSink, dumps
from elk.stack import asset_path, install_templates
from ml.common.logs import APP_DATASET, MASK
from ml.config import Settings
from ml.common.tracking import TrackingUnavailable
from ml.predict import load_version
from ml.registry import GateDecision, decision_fields
from serving.main import app as mlops_app
from serving.schemas import ServingOptions
from serving.service import ModelService
from tests import kibana_queries
from tests.fixtures.elasticsearch import ElasticsearchServer
from tests.fixtures.filebeat import EsFront, Filebeat
from tests.fixtures.mlflow_server import free_port
from tests.fixtures.smtp import SMTP_USER, Inbox
from tests.unit.serving_support import TelemetryCollector

# 900 s: without `make test` first, the first test also builds Filebeat (~6 min, once)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

RunFilebeat = Callable[..., Filebeat]
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


# --- application logs: ECS JSON (ml.common.logs) and Ray Serve's JSON replica logs --------------

ADMIN_TOKEN = "adm-3f9c1e-token"  # noqa: S105 - test values, each grepped for below
SMTP_WRONG_PASSWORD = "smtp-7b2d4a-password"  # noqa: S105
ES_PASSWORD = "es-5e8f0c-password"  # noqa: S105
SECRETS = (ADMIN_TOKEN, SMTP_WRONG_PASSWORD, ES_PASSWORD)


@pytest.fixture
def replica_log_dir(tmp_path: Path) -> Iterator[Path]:
    """Ray's temp dir as a session leaves it (`session_latest` -> the session), with the replica
    logger set up by Ray Serve's own function, JSON encoding: what a replica runs at start."""
    ray_temp = tmp_path / "ray"
    session = ray_temp / "session_2026-12-07_00-00-00_000000_1"
    serve_logs = session / "logs" / "serve"
    serve_logs.mkdir(parents=True)
    (ray_temp / "session_latest").symlink_to(session)
    logger = logging.getLogger(SERVE_LOGGER_NAME)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    streams = (sys.stdout, sys.stderr, builtins.print)
    try:
        configure_component_logger(
            component_name="model_ModelServer",
            component_id="fb0replica",
            logging_config=LoggingConfig(encoding="JSON", logs_dir=str(serve_logs)),
            component_type=ServeComponentType.REPLICA,
            max_bytes=10 * 2**20,
            backup_count=1,
        )
        # In a replica Serve also sends print/stdout/stderr to that logger: not in pytest.
        sys.stdout, sys.stderr, builtins.print = streams
        yield ray_temp
    finally:
        sys.stdout, sys.stderr, builtins.print = streams
        for handler in logger.handlers:
            handler.close()
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


def _log_hits(es: Elasticsearch, *filters: dict[str, Any]) -> list[dict[str, Any]]:
    index = events.index_for(APP_DATASET)
    es.indices.refresh(index=index, ignore_unavailable=True, allow_no_indices=True)
    query = {"bool": {"filter": list(filters)}}
    found = es.search(index=index, query=query, size=50, ignore_unavailable=True)
    return [hit["_source"] for hit in found["hits"]["hits"]]


def _wait_hits(
    es: Elasticsearch, beat: Filebeat, expected: int, *filters: dict[str, Any]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_S
    hits: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        hits = _log_hits(es, *filters)
        assert len(hits) <= expected, f"{len(hits)} log documents for {expected}: doubles"
        if len(hits) == expected:
            return hits
        time.sleep(1)
    raise AssertionError(f"{len(hits)}/{expected} log documents\n{beat.log_tail()}")


def test_cli_and_replica_logs_reach_the_app_stream_by_their_ecs_fields_without_secrets(
    es: Elasticsearch,
    run_filebeat: RunFilebeat,
    tmp_path: Path,
    smtp_server: Inbox,
    replica_log_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real `mlops` CLI logs into var/log/mlops.log.json (ecs-logging), a replica's
    ModelService into Ray Serve's JSON replica log (Ray's own logger set-up and formatter, in
    this process: no cluster), and the shipped filebeat.yml carries both into mlops-mlops.app,
    where they are found by log.level, message and the model version. The run had the admin
    token, an SMTP password (used: the login fails) and the Elasticsearch password in its
    settings; none is in the files nor in Elasticsearch.

    What runs: `mlops notify` (SMTP login against a real server), the real model loader
    against an MLflow registry that does not answer (the failed load: CLI and replica), and
    the gate's record through `ml.registry`'s logger with its fields (a real gate needs a
    trained model: the pipeline's own record is in the unit tests' reach, not here)."""
    model = f"fb-model-{uuid.uuid4().hex[:8]}"
    var_dir = tmp_path / "var"
    env = {
        "MLOPS_VAR_DIR": str(var_dir),
        "MLOPS_ADMIN_TOKEN": ADMIN_TOKEN,
        "ELASTICSEARCH_USERNAME": "elastic",
        "ELASTICSEARCH_PASSWORD": ES_PASSWORD,
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_STARTTLS": "false",
        "SMTP_USER": SMTP_USER,
        "SMTP_PASSWORD": SMTP_WRONG_PASSWORD,
        "SMTP_TO": "ops@example.com",
    }
    done = CliRunner().invoke(
        mlops_app,
        ["notify", "--status", "failure", "--title", model, "--channels", "email"],
        env=env,
    )
    assert done.exit_code == 0, done.output
    assert "email: not sent" in done.output  # the console as before

    # A registry that does not answer: the load fails at once (no retries), as in an outage.
    registry = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(registry)
    mlflow.set_registry_uri(registry)
    settings = Settings(var_dir=var_dir, model_name=model, mlflow_tracking_uri=registry)
    with pytest.raises(TrackingUnavailable):
        load_version(model, "7")
    decision = GateDecision(True, "no champion yet", "roc_auc", "7", 0.97, None, None)
    logging.getLogger("ml.registry").info(
        "gate: %s version 7 promoted", model, extra=decision_fields(model, decision)
    )
    # A library echoing a URL with a password: the mask catches it.
    url = f"http://elastic:{ES_PASSWORD}@127.0.0.1:9"
    logging.getLogger("elk.sinks").error("%s: connection refused", url)

    service = ModelService(settings, load_version, TelemetryCollector())
    with pytest.raises(TrackingUnavailable):  # a replica without any model refuses to start
        asyncio.run(service.apply(ServingOptions(model_uri=f"models:/{model}/8")))
    for handler in logging.getLogger(SERVE_LOGGER_NAME).handlers:
        handler.flush()

    log_dir = var_dir / "log"
    written = "".join(path.read_text() for path in log_dir.glob("*.log.json*"))
    written += "".join(path.read_text() for path in replica_log_dir.rglob("replica_*.log*"))
    assert model in written and f"{ES_PASSWORD}" not in written
    for secret in SECRETS:
        assert secret not in written, secret

    beat = run_filebeat(log_dir, replica_log_dir)
    cli_file = {"term": {"log.file.path": str(log_dir / "mlops.log.json")}}
    mine = {"term": {"mlops.model.name": model}}
    (failed_load,) = _wait_hits(
        es,
        beat,
        1,
        cli_file,
        mine,
        {"term": {"log.level": "error"}},
        {"match_phrase": {"message": f"loading models:/{model}/7 failed"}},
    )
    assert failed_load["mlops"]["model"] == {
        "name": model,
        "version": "7",
        "uri": f"models:/{model}/7",
    }
    assert failed_load["service"]["name"] == "mlops"
    assert failed_load["event"]["action"] == "model-load"
    assert failed_load["log"]["logger"] == "ml.predict"
    (gate,) = _wait_hits(
        es,
        beat,
        1,
        mine,
        {"term": {"log.level": "info"}},
        {"term": {"mlops.model.version": "7"}},
        {"term": {"mlops.promotion.decision": "promoted"}},
        {"match_phrase": {"message": "version 7 promoted"}},
    )
    assert gate["mlops"]["promotion"]["reason"] == "no champion yet"

    (replica,) = _wait_hits(
        es,
        beat,
        1,
        mine,
        {"term": {"service.name": "mlops-serving"}},
        {"term": {"log.level": "error"}},
        {"term": {"mlops.model.version": "8"}},
        {"match_phrase": {"message": f"loading models:/{model}/8 failed"}},
    )
    assert replica["event"]["dataset"] == APP_DATASET
    assert replica["mlops"]["serve"]["deployment"] == "model_ModelServer"
    assert replica["mlops"]["serve"]["replica"] == "fb0replica"
    assert replica["process"]["pid"] == os.getpid()
    assert replica["log"]["origin"]["file"]["name"] == "service.py"
    assert replica["error"]["type"] == "TrackingUnavailable"
    assert not {"levelname", "asctime", "timestamp_ns", "lineno"} & set(replica)
    # @timestamp is the record's own time (timestamp_ns, to the millisecond), not the read's
    (ray_line,) = [
        json.loads(line)
        for path in replica_log_dir.rglob("replica_*.log*")
        for line in path.read_text().splitlines()
        if f"models:/{model}/8" in line
    ]
    logged_ms = ray_line["timestamp_ns"] // 1_000_000
    shipped_at = datetime.fromisoformat(replica["@timestamp"].replace("Z", "+00:00"))
    # (1 ms of slack: the script divides a float; Filebeat read the line seconds later)
    assert abs(round(shipped_at.timestamp() * 1000) - logged_ms) <= 1

    (notify_line,) = _wait_hits(
        es,
        beat,
        1,
        cli_file,
        {"term": {"log.logger": "ml.notify"}},
        {"term": {"log.level": "warning"}},
    )
    assert "failed" in notify_line["message"]
    (echo,) = _wait_hits(es, beat, 1, cli_file, {"term": {"log.logger": "elk.sinks"}})
    assert MASK in echo["message"]
    for secret in SECRETS:
        found = es.count(
            index=events.index_for(APP_DATASET), query={"query_string": {"query": f'"{secret}"'}}
        )
        assert found["count"] == 0, secret
