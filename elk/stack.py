"""Install our Elasticsearch templates and import the Kibana saved objects.

Evidence behind the choices (Elasticsearch 8.19 integ-test-zip, the server the tests run):
composable index templates and data streams work (a `create` into `mlops-x` makes the backing
index `.ds-mlops-x-...`), but the `_data_stream` and `_ilm` REST APIs answer 405: no x-pack ILM
and no data-streams module. So the index template always declares `data_stream` and a
data-stream `lifecycle` (kept in the template, applied by a full distribution), and an ILM
policy is installed only where `_ilm/status` answers. A server that refuses data streams gets the
same template as plain indices.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from elasticsearch import ApiError, Elasticsearch

log = logging.getLogger(__name__)

INDEX_TEMPLATE = "mlops"
ILM_POLICY = "mlops-telemetry"
COMPONENTS = ("ecs-base", "system", "docker", "mlops")
SAVED_OBJECTS = "dashboards.ndjson"


def asset_path(*parts: str) -> Path:
    """A file shipped inside the `elk` package (templates, saved objects, filebeat.yml)."""
    return Path(str(resources.files("elk").joinpath(*parts)))


def load_json(*parts: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(asset_path(*parts).read_text(encoding="utf-8"))
    return loaded


def component_templates() -> dict[str, dict[str, Any]]:
    """`mlops-<name>` -> body, in composition order."""
    return {
        f"mlops-{name}": load_json("elasticsearch", f"component-{name}.json") for name in COMPONENTS
    }


def index_template() -> dict[str, Any]:
    return load_json("elasticsearch", "index-template.json")


def template_mappings() -> dict[str, Any]:
    """The merged `properties` of every component: what a document of ours can hold."""
    merged: dict[str, Any] = {}
    for body in component_templates().values():
        _merge(merged, body["template"]["mappings"].get("properties", {}))
    return merged


def mapped_fields() -> dict[str, str]:
    """Dotted field name -> mapping type for every leaf field in our templates."""
    fields: dict[str, str] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], path + ".")
            else:
                fields[path] = spec.get("type", "object")

    walk(template_mappings(), "")
    return fields


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass
class SetupReport:
    components: list[str] = field(default_factory=list)
    index_template: str = ""
    data_streams: bool = True
    ilm: bool = False

    def lines(self) -> list[str]:
        kind = "data streams" if self.data_streams else "plain indices"
        lifecycle = (
            f"ILM policy {ILM_POLICY}" if self.ilm else "data stream lifecycle (no ILM here)"
        )
        return [
            f"component templates: {', '.join(self.components)}",
            f"index template {self.index_template} -> {kind}, {lifecycle}",
        ]


def ilm_available(client: Elasticsearch) -> bool:
    """True where the ILM API exists (default distribution), False on the integ-test-zip."""
    try:
        client.ilm.get_status()
        return True
    except ApiError:
        return False


def install_templates(client: Elasticsearch) -> SetupReport:
    """Put the ILM policy (where available), the component templates and the index template."""
    report = SetupReport(ilm=ilm_available(client))
    for name, body in component_templates().items():
        client.cluster.put_component_template(name=name, **body)
        report.components.append(name)
    template = index_template()
    if report.ilm:
        client.ilm.put_lifecycle(name=ILM_POLICY, **load_json("elasticsearch", "ilm-policy.json"))
        template["template"]["settings"]["index.lifecycle.name"] = ILM_POLICY
    try:
        client.indices.put_index_template(name=INDEX_TEMPLATE, **template)
    except ApiError as exc:
        if "data_stream" not in str(exc) and "lifecycle" not in str(exc):
            raise
        log.warning("server refused data streams (%s); using plain indices", exc.message)
        template.pop("data_stream", None)
        template["template"].pop("lifecycle", None)
        client.indices.put_index_template(name=INDEX_TEMPLATE, **template)
        report.data_streams = False
    report.index_template = INDEX_TEMPLATE
    return report


class KibanaImportError(RuntimeError):
    """Kibana answered, but did not import every object."""


def import_saved_objects(
    kibana_url: str,
    ndjson: Path | None = None,
    auth: tuple[str, str] | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> int:
    """`POST /api/saved_objects/_import?overwrite=true`; returns the number imported."""
    path = ndjson or asset_path("kibana", SAVED_OBJECTS)
    headers = {"kbn-xsrf": "true"}
    if api_key:
        headers["Authorization"] = f"ApiKey {api_key}"
    with path.open("rb") as handle:
        response = httpx.post(
            kibana_url.rstrip("/") + "/api/saved_objects/_import",
            params={"overwrite": "true"},
            headers=headers,
            files={"file": (path.name, handle, "application/ndjson")},
            auth=auth,
            timeout=timeout_s,
        )
    response.raise_for_status()
    result = response.json()
    if not result.get("success", False):
        errors = [
            f"{item.get('type')}/{item.get('id')}: {item.get('error')}"
            for item in result.get("errors", [])
        ]
        raise KibanaImportError("Kibana import failed: " + "; ".join(errors))
    return int(result.get("successCount", 0))
