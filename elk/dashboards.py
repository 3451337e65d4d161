"""Kibana dashboards as code: the panel specs of `elk.dashboard_spec` -> saved objects NDJSON
(Kibana 8.x import format).

`python -m elk.dashboards` rewrites `elk/kibana/dashboards.ndjson`; a contract test checks the
committed file is what this module generates. The tests turn each panel back into the search
Kibana runs for it (`tests/kibana_queries.py`) and check it against a real Elasticsearch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from elk.dashboard_spec import DASHBOARDS, DATA_VIEWS, Dashboard, DataView, Metric, Panel

CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSIONS = {"index-pattern": "8.0.0", "lens": "8.9.0", "dashboard": "8.9.0"}
PANEL_VERSION = "8.11.0"
LAYER = "layer1"
RECORDS = "___records___"


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


def main(argv: list[str] | None = None) -> int:
    """Write the saved objects (default: the packaged `elk/kibana/dashboards.ndjson`)."""
    args = argv if argv is not None else sys.argv[1:]
    target = Path(args[0]) if args else Path(__file__).parent / "kibana" / "dashboards.ndjson"
    target.write_text(render_ndjson())
    print(f"{len(saved_objects())} saved objects written to {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
