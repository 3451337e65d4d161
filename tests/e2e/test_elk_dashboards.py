"""After a short pipeline + serving + collector run, every Kibana panel shows data.

The chain is real: the session's MLflow server and training run (`registered_model`), a real
Ray Serve app answering /predict (`serve_app`), the host collector (psutil) and Ray's own
Prometheus endpoint, a drift check, a CT check over labelled predictions (live quality), all
into a real Elasticsearch. Kibana itself cannot run here, so each Lens panel of the packaged
saved objects is translated into the search Kibana would run (tests/kibana_queries.py)
and run against Elasticsearch. Container panels are the one exception: there is no Docker
engine on this machine, so they can only be checked for mapped fields (tests/contracts) and a
search that runs without error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from elk import dashboard_spec, events
from elk.cli import after_train
from elk.collectors.host import HostCollector
from elk.collectors.ray_serve import RayServeCollector
from elk.drift_check import check_drift
from elk.shipper import Shipper
from elk.sinks import build_emitter
from elk.stack import asset_path, install_templates, mapped_fields
from ml.common.tasks import REGRESSION
from ml.config import Settings
from ml.data import load_frame
from tests import kibana_queries
from tests.e2e.quality_support import emit_ct_check, serve_labelled
from tests.fixtures.elasticsearch import ElasticsearchServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

NO_DOCKER_ENGINE = {"mlops-system-container-cpu", "mlops-system-container-memory"}
# The stack here serves a classifier: what only a regressor writes (the spec's `task` on a
# metric) has no data in it. Those fields are still checked as mapped; the quality event that
# carries them is built and checked in tests/unit/test_regression.py.
REGRESSOR_ONLY = {metric.field for metric in dashboard_spec.task_metrics(REGRESSION)}
REGRESSOR_ONLY_LABELS = {metric.label for metric in dashboard_spec.task_metrics(REGRESSION)}


@dataclass
class Populated:
    es: Elasticsearch
    settings: Settings
    trials: int


def _wait_for_lines(path: Path, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= at_least:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{path}: fewer than {at_least} lines after {timeout_s}s")


def _ray_metrics_url() -> str:
    import ray

    node = ray._private.worker.global_worker.node  # pylint: disable=protected-access
    return f"http://127.0.0.1:{node.metrics_export_port}/metrics"


def _scrape_serve_metrics(url: str, timeout_s: float = 90) -> list[dict[str, Any]]:
    """Ray exports replica metrics every few seconds: wait until the request counters and the
    error counter (the 422 above, maybe the session's only error so far) both show."""
    collector = RayServeCollector(url)
    wanted = {"deployment_requests_total", "http_errors_total"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = collector.collect()
        if wanted <= {name for event in found for name in event["mlops"]["serve"]}:
            return found
        time.sleep(2)
    raise TimeoutError(f"no Ray Serve {sorted(wanted)} at {url} after {timeout_s}s")


def _live_quality(settings: Settings, version: str, tmp: Path) -> None:
    """The champion's predictions with their true labels in a CT store, then a CT check's
    mlops.quality documents (test_elk_quality_panel.py checks them in detail)."""
    quality = settings.model_copy(
        update={"ct_database": f"sqlite:///{tmp / 'ct.db'}", "ct_min_labels": 20}
    )
    labelled = load_frame("demo").sample(n=60, random_state=7)
    rows, truth = labelled.drop(columns=["target"]), labelled["target"].tolist()
    serve_labelled(quality, version, rows, truth, datetime.now(UTC))
    emit_ct_check(quality)


@pytest.fixture(scope="module")
def populated(
    elasticsearch_server: ElasticsearchServer,
    serve_app: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Populated:
    es = elasticsearch_server.client()
    install_templates(es)
    elasticsearch_server.forget_events()  # the counts below are of this fixture's events only
    tmp = tmp_path_factory.mktemp("elk-e2e")
    model = serve_app.model
    settings = model.settings.model_copy(
        update={
            "elasticsearch_url": elasticsearch_server.url,
            "var_dir": tmp,
            "log_dir": tmp / "log",
            # the session pipeline's study, not one re-derived under the new var_dir
            "optuna_storage": model.settings.optuna_storage,
        }
    )

    # training: stages, trials, study, promotion of the session's pipeline run
    after_train(settings, model.result)

    # serving: real requests, good and bad; its NDJSON shipped as `mlops monitor ship` does
    records = load_frame("demo").drop(columns=["target"]).iloc[:40].to_dict("records")
    with httpx.Client(base_url=serve_app.base_url, timeout=30) as http:
        for record in records:
            assert http.post("/predict", json=record).status_code == 200
        assert http.post("/predict", json=records[:10]).status_code == 200
        assert http.post("/predict", json={"not a feature": 1}).status_code == 422
    log_dir = Path(str(serve_app.settings.log_dir))
    _wait_for_lines(log_dir / "mlops-mlops.prediction.ndjson", 51)
    assert Shipper(es, log_dir, state_path=tmp / "offsets.json").ship_once().complete

    # collectors: host (psutil) at 1 Hz for 3 samples, Ray Serve's Prometheus metrics twice
    emitter = build_emitter(settings, "mlops-monitor")
    host = HostCollector(settings.monitor_processes)
    ray_url = _ray_metrics_url()
    for sample in _scrape_serve_metrics(ray_url):
        emitter.emit(sample)
    for _ in range(3):
        time.sleep(1)
        for event in host.collect():
            emitter.emit(event)
    for sample in RayServeCollector(ray_url).collect():
        emitter.emit(sample)
    emitter.close()
    assert emitter.dropped == 0

    # drift: recent inputs shipped above against the champion's reference profile. The
    # templates refresh every 5 s; make what was just shipped searchable now.
    es.indices.refresh(index="mlops-*")
    check_drift(settings, version=model.version, notify=False)

    _live_quality(settings, model.version, tmp)

    es.indices.refresh(index="mlops-*")
    study = model.result.tuning
    return Populated(es, settings, study.complete + study.pruned + study.failed)


@pytest.fixture(scope="module")
def searches() -> list[kibana_queries.PanelSearch]:
    return kibana_queries.panel_searches(
        kibana_queries.read_ndjson(asset_path("kibana", "dashboards.ndjson"))
    )


def _metric_values(bucket: dict[str, Any], metric_id: str) -> list[Any]:
    """The value(s) of one metric aggregation in an x bucket (inside split buckets if any)."""
    inner = bucket["split"]["buckets"] if "split" in bucket else [bucket]
    found = []
    for item in inner:
        result = item[metric_id]
        if "values" in result:
            found += [value for value in result["values"].values() if value is not None]
        elif "top" in result:
            found += [top["metrics"] for top in result["top"]]
        elif result.get("value") is not None:
            found.append(result["value"])
    return found


def test_every_panel_field_is_mapped_and_has_data(
    populated: Populated, searches: list[kibana_queries.PanelSearch]
) -> None:
    mapped = mapped_fields()
    for search in searches:
        for field in search.fields:
            assert field in mapped, f"{search.title}: {field} not in our templates"
            if search.lens_id in NO_DOCKER_ENGINE or field in REGRESSOR_ONLY:
                continue
            query = {
                "bool": {
                    "filter": [
                        *search.body["query"]["bool"]["filter"],
                        {"exists": {"field": field}},
                    ]
                }
            }
            count = populated.es.count(index=search.index, query=query)["count"]
            assert count > 0, f"{search.title}: no document has {field}"


def test_every_panel_aggregation_returns_buckets(
    populated: Populated, searches: list[kibana_queries.PanelSearch]
) -> None:
    assert len(searches) == sum(len(board.panels) for board in dashboard_spec.DASHBOARDS)
    for search in searches:
        response = populated.es.search(index=search.index, **search.body)
        buckets = response["aggregations"]["x"]["buckets"]
        if search.lens_id in NO_DOCKER_ENGINE:
            assert buckets == []  # no Docker engine here; the search itself must still run
            continue
        assert buckets, f"{search.title}: no buckets"
        for metric_id, label in search.metrics.items():
            if label in REGRESSOR_ONLY_LABELS:
                continue
            values = [value for bucket in buckets for value in _metric_values(bucket, metric_id)]
            assert values, f"{search.title}: {label} is empty in every bucket"


def test_training_events_are_complete(populated: Populated) -> None:
    es = populated.es
    study_name = events.index_for(events.DATASET_TRIAL)
    trials = es.count(index=study_name)["count"]
    assert trials == populated.trials
    assert es.count(index=events.index_for(events.DATASET_STUDY))["count"] == 1
    promotion = es.search(index=events.index_for(events.DATASET_PROMOTION))["hits"]["hits"]
    assert [hit["_source"]["mlops"]["promotion"]["decision"] for hit in promotion] == ["promoted"]
    stages = es.search(index=events.index_for(events.DATASET_STAGE), size=20)["hits"]["hits"]
    assert {hit["_source"]["mlops"]["stage"]["name"] for hit in stages} == {
        "data",
        "tune",
        "train",
        "gate",
    }


def test_serving_events_count_requests_and_errors(populated: Populated) -> None:
    index = events.index_for(events.DATASET_PREDICTION)
    failures = populated.es.count(
        index=index, query={"term": {"mlops.prediction.status": "failure"}}
    )
    assert failures["count"] >= 1
    with_features = populated.es.search(
        index=index, size=1, query={"term": {"mlops.prediction.route": "/predict"}}
    )
    assert with_features["hits"]["hits"][0]["_source"]["mlops"]["model"]["version"]
