"""The live-quality panels of the Model serving dashboard show the `mlops.quality` documents
CT checks write, against a real Elasticsearch.

A demo champion in a local MLflow store, its predictions recorded with their true labels in a
real SQLite CT store, then two CT checks: the first through `mlops ct check` (the CLI and its
hook, into Elasticsearch), when the last 24 hours hold too few labels for a score, the second
after more labelled traffic. Each panel's search (tests/kibana_queries.py, what Kibana
would run) must return exactly the documents written, with values in every metric. No Ray
Serve: the serving dashboard's other panels are tests/e2e/test_elk_dashboards.py's.
"""

# pytest fixtures arrive as arguments of the same name; test names say what they check
# pylint: disable=missing-function-docstring,redefined-outer-name
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from elk import dashboard_spec, events
from elk.stack import asset_path, install_templates
from ml.common.tasks import REGRESSION
from ml.config import Settings
from ml.data import load_frame
from tests import kibana_queries
from tests.e2e.quality_support import QUALITY_PANELS, emit_ct_check, serve_labelled
from tests.fixtures.elasticsearch import ElasticsearchServer
from tests.unit.registry_support import demo_split, register_champion

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

MIN_LABELS = 40
# What only a regressor writes: this stack serves a classifier (the spec marks the metrics).
REGRESSOR_ONLY_LABELS = {metric.label for metric in dashboard_spec.task_metrics(REGRESSION)}


@dataclass
class Written:
    """What the two CT checks wrote, and where."""

    es: Elasticsearch
    settings: Settings
    version: str
    first: list[dict[str, Any]]  # mlops.quality documents of the first check, by window kind
    documents: list[dict[str, Any]]  # all of them


def _quality_documents(es: Elasticsearch, model_name: str | None = None) -> list[dict[str, Any]]:
    """The mlops.quality documents in the index: of `model_name`, or all (the session's other
    dashboard tests write some too, and the panels show every model's)."""
    es.indices.refresh(index="mlops-*")
    query = {"term": {"mlops.model.name": model_name}} if model_name else {"match_all": {}}
    found = es.search(index=events.index_for(events.DATASET_QUALITY), query=query, size=1000)
    return [hit["_source"] for hit in found["hits"]["hits"]]


@pytest.fixture(scope="module")
def written(
    elasticsearch_server: ElasticsearchServer, tmp_path_factory: pytest.TempPathFactory
) -> Written:
    from serving.main import app

    es = elasticsearch_server.client()
    install_templates(es)
    settings = Settings(
        var_dir=tmp_path_factory.mktemp("quality-panel") / "var",
        model_name="quality-panel-model",
        elasticsearch_url=elasticsearch_server.url,
        ct_min_labels=MIN_LABELS,
    )
    version, _ = register_champion(settings, demo_split())
    frame = load_frame("demo").sample(n=160, random_state=7)
    X, truth = frame.drop(columns=["target"]), frame["target"].tolist()
    now = datetime.now(UTC)
    serve_labelled(settings, version, X.iloc[:100], truth[:100], now - timedelta(days=3))
    serve_labelled(settings, version, X.iloc[100:120], truth[100:120], now)

    env = {
        "MLOPS_VAR_DIR": str(settings.var_dir),
        "MLOPS_MODEL_NAME": settings.model_name,
        "MLOPS_CT_MIN_LABELS": str(MIN_LABELS),
        "ELASTICSEARCH_URL": elasticsearch_server.url,
    }
    result = CliRunner().invoke(app, ["ct", "check"], env=env)
    assert result.exit_code == 0, result.output
    first = sorted(
        _quality_documents(es, settings.model_name),
        key=lambda doc: doc["mlops"]["quality"]["window"]["kind"],
    )

    serve_labelled(settings, version, X.iloc[120:], truth[120:], now)  # 60 in the last 24 h
    emit_ct_check(settings)
    return Written(es, settings, version, first, _quality_documents(es, settings.model_name))


@pytest.fixture(scope="module")
def searches() -> dict[str, kibana_queries.PanelSearch]:
    objects = kibana_queries.read_ndjson(asset_path("kibana", "dashboards.ndjson"))
    return {search.lens_id: search for search in kibana_queries.panel_searches(objects)}


def _values(bucket: dict[str, Any], metric_id: str) -> list[float]:
    inner = bucket["split"]["buckets"] if "split" in bucket else [bucket]
    return [item[metric_id]["value"] for item in inner if item[metric_id]["value"] is not None]


def test_the_panels_are_on_the_model_serving_dashboard() -> None:
    serving = next(board for board in dashboard_spec.DASHBOARDS if board.title.endswith("serving"))
    assert set(QUALITY_PANELS) <= {panel.id for panel in serving.panels}


def test_too_few_labels_give_a_count_and_no_score(written: Written) -> None:
    hours, rows = (doc["mlops"]["quality"] for doc in written.first)
    assert (hours["window"]["kind"], rows["window"]["kind"]) == ("hours", "rows")
    assert (hours["labelled"], hours["enough_labels"]) == (20, False)
    assert not {"accuracy", "f1", "roc_auc"} & set(hours), "no score from 20 labels"
    assert (rows["labelled"], rows["enough_labels"]) == (120, True)
    assert {"accuracy", "f1", "roc_auc"} <= set(rows)


def test_documents_carry_the_champion_and_its_holdout_score(written: Written) -> None:
    metric = written.settings.promotion_metric
    client = MlflowClient(written.settings.mlflow_tracking_uri)  # not the cwd's default store
    tags = client.get_model_version(written.settings.model_name, written.version).tags
    assert len(written.documents) == 4  # two checks, two windows each
    for document in written.documents:
        assert document["mlops"]["model"]["version"] == written.version
        assert document["mlops"]["quality"]["holdout_score"] == float(tags[f"holdout.{metric}"])


def test_each_quality_panel_returns_the_documents_written(
    written: Written, searches: dict[str, kibana_queries.PanelSearch]
) -> None:
    every = _quality_documents(written.es)  # the panels chart every model's documents
    assert len(every) >= len(written.documents)
    kinds = [doc["mlops"]["quality"]["window"]["kind"] for doc in every]
    expected = {
        "mlops-serving-quality-rows": kinds.count("rows"),
        "mlops-serving-quality-hours": kinds.count("hours"),
        "mlops-serving-quality-labelled": len(kinds),
    }
    for lens_id, count in expected.items():
        search = searches[lens_id]
        # the data view names every serving data stream; Kibana skips the missing ones too
        response = written.es.search(index=search.index, ignore_unavailable=True, **search.body)
        assert response["hits"]["total"]["value"] == count, search.title
        buckets = response["aggregations"]["x"]["buckets"]
        for metric_id, label in search.metrics.items():
            if label in REGRESSOR_ONLY_LABELS:  # a regressor's: this stack serves a classifier
                continue
            values = [value for bucket in buckets for value in _values(bucket, metric_id)]
            assert values, f"{search.title}: {label} is empty in every bucket"


def test_the_holdout_line_is_the_champions_score(
    written: Written, searches: dict[str, kibana_queries.PanelSearch]
) -> None:
    holdouts = {doc["mlops"]["quality"]["holdout_score"] for doc in _quality_documents(written.es)}
    assert written.documents[0]["mlops"]["quality"]["holdout_score"] in holdouts
    search = searches["mlops-serving-quality-rows"]
    holdout_id = next(key for key, label in search.metrics.items() if "holdout" in label)
    response = written.es.search(index=search.index, ignore_unavailable=True, **search.body)
    buckets = response["aggregations"]["x"]["buckets"]
    plotted = {value for bucket in buckets for value in _values(bucket, holdout_id)}
    assert plotted and plotted <= holdouts, "the line plots holdout scores, nothing else"
