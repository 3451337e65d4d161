"""Kibana dashboards as code: panel specs -> saved objects NDJSON (Kibana 8.x import format).

`python -m elk.dashboards` rewrites `elk/kibana/dashboards.ndjson`; a contract test checks the
committed file is what this module generates. `panel_searches()` turns every Lens panel of an
NDJSON file back into the Elasticsearch search Kibana runs for it (date histogram or terms,
split by terms, avg/max/percentiles/...), so the integration tests can check, against a real
Elasticsearch, that each panel shows data.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elk.events import INDEX_PREFIX

CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSIONS = {"index-pattern": "8.0.0", "lens": "8.9.0", "dashboard": "8.9.0"}
PANEL_VERSION = "8.11.0"
LAYER = "layer1"
RECORDS = "___records___"


@dataclass(frozen=True)
class DataView:
    id: str
    name: str
    datasets: tuple[str, ...]

    @property
    def title(self) -> str:
        """The index pattern: our data streams for these datasets."""
        return ",".join(INDEX_PREFIX + dataset for dataset in self.datasets)


@dataclass(frozen=True)
class Metric:
    """One y-axis value: `op` is a Lens operation (average, max, percentile, count, ...)."""

    op: str
    field: str | None = None
    label: str = ""
    percentile: int | None = None
    percent: bool = False


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    data_view: DataView
    dataset: str
    metrics: tuple[Metric, ...]
    split: str | None = None
    x_terms: str | None = None  # a terms x-axis instead of the date histogram
    series: str = "line"
    width: int = 24
    where: str = ""  # more KQL `field : "value"` clauses, joined to the dataset's with `and`

    @property
    def kql(self) -> str:
        """The Lens query: the panel's dataset, narrowed by `where`."""
        dataset = f'event.dataset : "{self.dataset}"'
        return f"{dataset} and {self.where}" if self.where else dataset


@dataclass(frozen=True)
class Dashboard:
    id: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    time_from: str = "now-24h"


SYSTEM = DataView("mlops-system", "MLOps system", ("system.*", "docker.*"))
SERVING = DataView(
    "mlops-serving",
    "MLOps serving",
    ("mlops.prediction", "mlops.serve", "mlops.drift", "mlops.quality"),
)
TRAINING = DataView(
    "mlops-training",
    "MLOps training",
    ("mlops.trial", "mlops.study", "mlops.promotion", "mlops.stage"),
)
DATA_VIEWS = (SYSTEM, SERVING, TRAINING)

PCT = {"percent": True}


def live_quality_panel(kind: str, title: str) -> Panel:
    """Live accuracy, F1 and ROC AUC of one window kind (`mlops.quality`), beside the holdout
    score the champion was promoted with. A window with too few labels has no scores: a gap."""
    return Panel(
        f"mlops-serving-quality-{kind}",
        title,
        SERVING,
        "mlops.quality",
        (
            Metric("average", "mlops.quality.accuracy", "Live accuracy"),
            Metric("average", "mlops.quality.f1", "Live F1"),
            Metric("average", "mlops.quality.roc_auc", "Live ROC AUC"),
            Metric("average", "mlops.quality.holdout_score", "Champion holdout score"),
        ),
        where=f'mlops.quality.window.kind : "{kind}"',
    )


DASHBOARDS = (
    Dashboard(
        "mlops-dashboard-system",
        "MLOps · System",
        "CPU, memory, disk and network per host; our processes; container CPU and memory.",
        (
            Panel(
                "mlops-system-cpu",
                "CPU busy per host",
                SYSTEM,
                "system.cpu",
                (Metric("average", "system.cpu.total.norm.pct", "CPU busy", **PCT),),
                split="host.name",
            ),
            Panel(
                "mlops-system-memory",
                "Memory used per host",
                SYSTEM,
                "system.memory",
                (Metric("average", "system.memory.actual.used.pct", "Memory used", **PCT),),
                split="host.name",
            ),
            Panel(
                "mlops-system-load",
                "Load average (1 min) per host",
                SYSTEM,
                "system.load",
                (Metric("average", "system.load.1", "Load 1m"),),
                split="host.name",
            ),
            Panel(
                "mlops-system-disk",
                "Disk used per mount",
                SYSTEM,
                "system.filesystem",
                (Metric("max", "system.filesystem.used.pct", "Disk used", **PCT),),
                split="system.filesystem.mount_point",
            ),
            Panel(
                "mlops-system-network",
                "Network bytes/s per host",
                SYSTEM,
                "system.network",
                (
                    Metric("counter_rate", "system.network.in.bytes", "In bytes/s"),
                    Metric("counter_rate", "system.network.out.bytes", "Out bytes/s"),
                ),
                split="host.name",
            ),
            Panel(
                "mlops-system-process-cpu",
                "CPU of our processes by role",
                SYSTEM,
                "system.process",
                (Metric("sum", "system.process.cpu.total.norm.pct", "CPU", **PCT),),
                split="labels.role",
            ),
            Panel(
                "mlops-system-process-rss",
                "Memory (RSS) of our processes by role",
                SYSTEM,
                "system.process",
                (Metric("sum", "system.process.memory.rss.bytes", "RSS"),),
                split="labels.role",
            ),
            Panel(
                "mlops-system-container-cpu",
                "Container CPU",
                SYSTEM,
                "docker.container",
                (Metric("average", "docker.cpu.total.pct", "CPU", **PCT),),
                split="container.name",
            ),
            Panel(
                "mlops-system-container-memory",
                "Container memory",
                SYSTEM,
                "docker.container",
                (Metric("average", "docker.memory.usage.pct", "Memory", **PCT),),
                split="container.name",
            ),
        ),
    ),
    Dashboard(
        "mlops-dashboard-serving",
        "MLOps · Model serving",
        "Request rate, latency percentiles, errors, classes, model versions, drift, live "
        "quality beside the champion's holdout score.",
        (
            Panel(
                "mlops-serving-rate",
                "Predictions per interval by route",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.route",
                series="bar_stacked",
            ),
            Panel(
                "mlops-serving-latency",
                "Latency p50 / p95 / p99 (ms)",
                SERVING,
                "mlops.prediction",
                (
                    Metric("percentile", "mlops.prediction.latency_ms", "p50", percentile=50),
                    Metric("percentile", "mlops.prediction.latency_ms", "p95", percentile=95),
                    Metric("percentile", "mlops.prediction.latency_ms", "p99", percentile=99),
                ),
            ),
            Panel(
                "mlops-serving-errors",
                "Error rate (share of predictions by status)",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.status",
                series="bar_percentage_stacked",
            ),
            Panel(
                "mlops-serving-classes",
                "Class distribution",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.label",
                series="bar_percentage_stacked",
            ),
            Panel(
                "mlops-serving-versions",
                "Model version serving over time",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.model.version",
                series="bar_stacked",
            ),
            Panel(
                "mlops-serving-probability",
                "Mean predicted probability",
                SERVING,
                "mlops.prediction",
                (Metric("average", "mlops.prediction.probability", "Probability"),),
                split="mlops.model.version",
            ),
            Panel(
                "mlops-serving-ray-requests",
                "Ray Serve HTTP requests/s (Prometheus)",
                SERVING,
                "mlops.serve",
                (
                    Metric("counter_rate", "mlops.serve.http_requests_total", "Requests/s"),
                    Metric("counter_rate", "mlops.serve.http_errors_total", "Errors/s"),
                ),
            ),
            Panel(
                "mlops-serving-drift",
                "Drift per feature (PSI)",
                SERVING,
                "mlops.drift",
                (Metric("max", "mlops.drift.psi", "PSI"),),
                split="mlops.drift.feature",
                width=48,
            ),
            live_quality_panel("rows", "Live quality, newest labelled predictions, vs holdout"),
            live_quality_panel("hours", "Live quality, last hours, vs holdout"),
            Panel(
                "mlops-serving-quality-labelled",
                "Labelled predictions per live-quality window (scores need the minimum)",
                SERVING,
                "mlops.quality",
                (
                    Metric("max", "mlops.quality.labelled", "Labelled"),
                    Metric("max", "mlops.quality.min_labels", "Needed for scores"),
                ),
                split="mlops.quality.window.name",
                width=48,
            ),
        ),
    ),
    Dashboard(
        "mlops-dashboard-training",
        "MLOps · Training",
        "Trial scores over time, best score per study, promotion decisions, stages.",
        (
            Panel(
                "mlops-training-trials",
                "Trial scores over time",
                TRAINING,
                "mlops.trial",
                (Metric("max", "mlops.trial.value", "Score"),),
                split="mlops.study.name",
                series="line",
            ),
            Panel(
                "mlops-training-best",
                "Best score per study",
                TRAINING,
                "mlops.study",
                (Metric("max", "mlops.study.best_value", "Best score"),),
                x_terms="mlops.study.name",
                series="bar",
            ),
            Panel(
                "mlops-training-promotions",
                "Promotion decisions",
                TRAINING,
                "mlops.promotion",
                (Metric("count", label="Decisions"),),
                split="mlops.promotion.decision",
                series="bar_stacked",
            ),
            Panel(
                "mlops-training-trial-states",
                "Trials by state (pruned, complete, failed)",
                TRAINING,
                "mlops.trial",
                (Metric("count", label="Trials"),),
                split="mlops.trial.state",
                series="bar_stacked",
            ),
            Panel(
                "mlops-training-stages",
                "Stage duration (s)",
                TRAINING,
                "mlops.stage",
                (Metric("max", "mlops.stage.duration_s", "Duration"),),
                split="mlops.stage.name",
                series="bar_stacked",
                width=48,
            ),
        ),
    ),
)


# --- saved objects -----------------------------------------------------------------------------


def _saved_object(kind: str, object_id: str, attributes: dict, references: list) -> dict:
    return {
        "type": kind,
        "id": object_id,
        "attributes": attributes,
        "references": references,
        "coreMigrationVersion": CORE_MIGRATION_VERSION,
        "typeMigrationVersion": TYPE_MIGRATION_VERSIONS[kind],
        "managed": False,
    }


def data_view_object(view: DataView) -> dict[str, Any]:
    attributes = {"title": view.title, "name": view.name, "timeFieldName": "@timestamp"}
    return _saved_object("index-pattern", view.id, attributes, [])


def _metric_columns(index: int, metric: Metric) -> dict[str, dict[str, Any]]:
    """The Lens column(s) of one metric; a counter rate needs a hidden max column under it."""
    column_id = f"m{index}"
    params: dict[str, Any] = {"emptyAsNull": True}
    if metric.percent:
        params["format"] = {"id": "percent", "params": {"decimals": 1}}
    base = {
        "label": metric.label or metric.op,
        "customLabel": bool(metric.label),
        "dataType": "number",
        "isBucketed": False,
        "scale": "ratio",
    }
    if metric.op == "count":
        return {
            column_id: {**base, "operationType": "count", "sourceField": RECORDS, "params": params}
        }
    if metric.op == "counter_rate":
        inner = f"{column_id}x"
        return {
            inner: {
                **base,
                "label": f"Max of {metric.field}",
                "customLabel": False,
                "operationType": "max",
                "sourceField": metric.field,
                "params": params,
            },
            column_id: {
                **base,
                "operationType": "counter_rate",
                "references": [inner],
                "timeScale": "s",
                "params": params,
            },
        }
    if metric.op == "percentile":
        params["percentile"] = metric.percentile
    if metric.op == "last_value":
        params["sortField"] = "@timestamp"
    return {
        column_id: {
            **base,
            "operationType": metric.op,
            "sourceField": metric.field,
            "params": params,
        }
    }


def _bucket_column(field_name: str, order_by: str, size: int) -> dict[str, Any]:
    return {
        "label": f"Top values of {field_name}",
        "dataType": "string",
        "operationType": "terms",
        "sourceField": field_name,
        "isBucketed": True,
        "scale": "ordinal",
        "params": {
            "size": size,
            "orderBy": {"type": "column", "columnId": order_by},
            "orderDirection": "desc",
            "otherBucket": True,
            "missingBucket": False,
        },
    }


def lens_object(panel: Panel) -> dict[str, Any]:
    columns: dict[str, dict[str, Any]] = {}
    if panel.x_terms:
        columns["x"] = _bucket_column(panel.x_terms, "m0", 20)
    else:
        columns["x"] = {
            "label": "@timestamp",
            "dataType": "date",
            "operationType": "date_histogram",
            "sourceField": "@timestamp",
            "isBucketed": True,
            "scale": "interval",
            "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False},
        }
    if panel.split:
        columns["s"] = _bucket_column(panel.split, "m0", 10)
    for index, metric in enumerate(panel.metrics):
        columns.update(_metric_columns(index, metric))
    accessors = [f"m{index}" for index in range(len(panel.metrics))]
    layer: dict[str, Any] = {
        "layerId": LAYER,
        "layerType": "data",
        "seriesType": panel.series,
        "xAccessor": "x",
        "accessors": accessors,
    }
    if panel.split:
        layer["splitAccessor"] = "s"
    state = {
        "datasourceStates": {
            "formBased": {
                "layers": {
                    LAYER: {
                        "columns": columns,
                        "columnOrder": [c for c in ("x", "s") if c in columns]
                        + [c for c in columns if c not in ("x", "s")],
                        "incompleteColumns": {},
                    }
                }
            }
        },
        "visualization": {
            "legend": {"isVisible": True, "position": "right"},
            "valueLabels": "hide",
            "fittingFunction": "Linear",
            "preferredSeriesType": panel.series,
            "layers": [layer],
        },
        "query": {"language": "kuery", "query": panel.kql},
        "filters": [],
        "internalReferences": [],
        "adHocDataViews": {},
    }
    attributes = {
        "title": panel.title,
        "description": "",
        "visualizationType": "lnsXY",
        "state": state,
    }
    references = [
        {
            "type": "index-pattern",
            "id": panel.data_view.id,
            "name": f"indexpattern-datasource-layer-{LAYER}",
        }
    ]
    return _saved_object("lens", panel.id, attributes, references)


def dashboard_object(dashboard: Dashboard) -> dict[str, Any]:
    panels_json, references, x, y = [], [], 0, 0
    for number, panel in enumerate(dashboard.panels, start=1):
        key = str(number)
        if x + panel.width > 48:
            x, y = 0, y + 15
        panels_json.append(
            {
                "version": PANEL_VERSION,
                "type": "lens",
                "panelIndex": key,
                "gridData": {"x": x, "y": y, "w": panel.width, "h": 15, "i": key},
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": f"panel_{key}",
            }
        )
        references.append({"name": f"{key}:panel_{key}", "type": "lens", "id": panel.id})
        x += panel.width
    attributes = {
        "title": dashboard.title,
        "description": dashboard.description,
        "panelsJSON": json.dumps(panels_json, separators=(",", ":")),
        "optionsJSON": json.dumps(
            {
                "useMargins": True,
                "syncColors": False,
                "syncTooltips": False,
                "hidePanelTitles": False,
            }
        ),
        "timeRestore": True,
        "timeFrom": dashboard.time_from,
        "timeTo": "now",
        "refreshInterval": {"pause": False, "value": 30000},
        "kibanaSavedObjectMeta": {
            "searchSourceJSON": json.dumps(
                {"query": {"query": "", "language": "kuery"}, "filter": []}
            )
        },
    }
    return _saved_object("dashboard", dashboard.id, attributes, references)


def saved_objects() -> list[dict[str, Any]]:
    """Data views first, then visualizations, then dashboards (import resolves in any order)."""
    objects = [data_view_object(view) for view in DATA_VIEWS]
    for dashboard in DASHBOARDS:
        objects += [lens_object(panel) for panel in dashboard.panels]
    objects += [dashboard_object(dashboard) for dashboard in DASHBOARDS]
    return objects


def render_ndjson() -> str:
    return "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in saved_objects())


# --- panel -> Elasticsearch search -------------------------------------------------------------


ES_AGGREGATIONS = {"average": "avg", "max": "max", "min": "min", "sum": "sum"}
KQL_TERM = re.compile(r'^\s*([\w.@]+)\s*:\s*"([^"]*)"\s*$')


@dataclass
class PanelSearch:
    """The search Kibana runs for one Lens panel, and the metrics to find in its buckets."""

    lens_id: str
    title: str
    index: str
    body: dict[str, Any]
    metrics: dict[str, str] = field(default_factory=dict)  # agg name -> Lens column label
    fields: list[str] = field(default_factory=list)


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kql_filters(query: str) -> list[dict[str, Any]]:
    """Our panels use `field : "value"` clauses joined by `and`; anything else is an error."""
    filters = []
    for clause in re.split(r"\s+and\s+", query.strip()) if query.strip() else []:
        match = KQL_TERM.match(clause)
        if not match:
            raise ValueError(f"unsupported KQL clause: {clause!r}")
        filters.append({"term": {match.group(1): match.group(2)}})
    return filters


def _metric_aggregation(column: dict[str, Any]) -> dict[str, Any] | None:
    operation = column["operationType"]
    source = column.get("sourceField")
    if operation in ES_AGGREGATIONS:
        return {ES_AGGREGATIONS[operation]: {"field": source}}
    if operation == "percentile":
        return {"percentiles": {"field": source, "percents": [column["params"]["percentile"]]}}
    if operation == "median":
        return {"percentiles": {"field": source, "percents": [50]}}
    if operation == "last_value":
        return {"top_metrics": {"metrics": {"field": source}, "sort": {"@timestamp": "desc"}}}
    return None  # count is the bucket's doc_count; counter_rate derives from its max column


def panel_searches(objects: Iterable[dict[str, Any]], interval: str = "10s") -> list[PanelSearch]:
    objects = list(objects)
    views = {obj["id"]: obj for obj in objects if obj["type"] == "index-pattern"}
    searches = []
    for lens in (obj for obj in objects if obj["type"] == "lens"):
        state = lens["attributes"]["state"]
        view_id = lens["references"][0]["id"]
        layer = next(iter(state["datasourceStates"]["formBased"]["layers"].values()))
        columns = layer["columns"]
        metric_aggs, labels, used = {}, {}, []
        for column_id, column in columns.items():
            if column.get("sourceField") and column["sourceField"] != RECORDS:
                used.append(column["sourceField"])
            if column["isBucketed"]:
                continue
            aggregation = _metric_aggregation(column)
            if aggregation is not None:
                metric_aggs[column_id] = aggregation
                labels[column_id] = column["label"]
        inner: dict[str, Any] = dict(metric_aggs)
        visual = state["visualization"]["layers"][0]
        split_id = visual.get("splitAccessor")
        if split_id:
            split = columns[split_id]
            inner = {
                "split": {
                    "terms": {"field": split["sourceField"], "size": split["params"]["size"]},
                    "aggs": inner,
                }
            }
        x_column = columns[visual["xAccessor"]]
        if x_column["operationType"] == "date_histogram":
            x_agg: dict[str, Any] = {
                "date_histogram": {
                    "field": "@timestamp",
                    "fixed_interval": interval,
                    "min_doc_count": 1,
                }
            }
        else:
            x_agg = {
                "terms": {"field": x_column["sourceField"], "size": x_column["params"]["size"]}
            }
        x_agg["aggs"] = inner
        body = {
            "size": 0,
            "track_total_hits": True,
            "query": {"bool": {"filter": kql_filters(state["query"]["query"])}},
            "aggs": {"x": x_agg},
        }
        searches.append(
            PanelSearch(
                lens["id"],
                lens["attributes"]["title"],
                views[view_id]["attributes"]["title"],
                body,
                labels,
                sorted(set(used)),
            )
        )
    return searches


def main(argv: list[str] | None = None) -> int:
    """Write the saved objects (default: the packaged `elk/kibana/dashboards.ndjson`)."""
    args = argv if argv is not None else sys.argv[1:]
    target = Path(args[0]) if args else Path(__file__).parent / "kibana" / "dashboards.ndjson"
    target.write_text(render_ndjson())
    print(f"{len(saved_objects())} saved objects written to {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
