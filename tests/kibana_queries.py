"""Kibana's searches, rebuilt from our saved objects: every Lens panel of a dashboards NDJSON
file becomes the Elasticsearch search Kibana runs for it (date histogram or terms, split by
terms, avg/max/percentiles/...), so tests can check against a real Elasticsearch that each
panel shows data. Only tests need it, so it lives with them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elk.dashboards import RECORDS

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
