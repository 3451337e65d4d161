"""Request validation, the user_config model, the OpenAPI builder and the Serve config
rendering: no server needed (the routes themselves are tested against a real Ray Serve)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from ml.config import Settings
from serving.deploy import model_deployment, read_config, render_config, ServeError
from serving.schemas import (
    FLOAT32_MAX,
    RecordValidator,
    RequestLimits,
    RequestError,
    ServingOptions,
    check_frame,
    with_model_schemas,
)

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "serve_config.yaml"
NUMERIC = RecordValidator({"a": "numeric", "b": "numeric"})
MIXED = RecordValidator({"a": "numeric", "colour": "categorical", "flag": "boolean"})


def test_one_record_or_a_list() -> None:
    assert NUMERIC.records({"a": 1, "b": 2.5}, 10) == [{"a": 1, "b": 2.5}]
    assert len(NUMERIC.records([{"a": 1, "b": 2}] * 3, 10)) == 3


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([], "body", 422),
        ("text", "body", 422),
        ([1], "records[0]", 422),
        ({"a": 1}, "records[0].b", 422),
        ({"a": 1, "b": 2, "c": 3}, "records[0].c", 422),
        ([{"a": 1, "b": 2}] * 11, "body", 413),
    ],
)
def test_bad_bodies_name_the_field(body: Any, field: str, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        NUMERIC.records(body, max_rows=10)
    assert caught.value.field == field
    assert caught.value.status == status


def test_missing_and_unknown_features_are_counted_not_listed_whole() -> None:
    """A record for another model (50 other columns) gets one short line, not every name."""
    wide = RecordValidator({f"feature_{i:02d}": "numeric" for i in range(50)})
    for record, field, start in [
        ({"feature_00": 1}, "records[0].feature_01", "missing feature(s) 'feature_01'"),
        (
            {f"other_{i}": 1 for i in range(50)},
            "records[0].other_0",
            "unknown feature(s) 'other_0'",
        ),
    ]:
        with pytest.raises(RequestError) as caught:
            wide.records(record, max_rows=10)
        assert caught.value.field == field
        message = caught.value.message
        assert message.startswith(start) and message.endswith(" more"), message
        assert len(message) < 120


@pytest.mark.parametrize(
    "value", ["1", True, [1], math.nan, math.inf, {"x": 1}, 1e308, -1e39, 10**400]
)
def test_numeric_rows_reject_what_is_not_a_finite_float32_number(value: Any) -> None:
    with pytest.raises(RequestError) as caught:
        NUMERIC.numeric_rows([{"a": 1, "b": 2}, {"a": 1, "b": value}])
    assert caught.value.field == "records[1].b"


def test_the_float32_bound_itself_is_accepted_everywhere() -> None:
    assert NUMERIC.numeric_rows([{"a": FLOAT32_MAX, "b": -FLOAT32_MAX}])[0, 0] == FLOAT32_MAX
    MIXED.frame([{"a": -FLOAT32_MAX, "colour": "red", "flag": True}])
    check_frame(pd.DataFrame({"a": [FLOAT32_MAX]}), 10)
    with pytest.raises(RequestError, match=r"records\[0\]\.a.*float32"):
        MIXED.frame([{"a": 1e39, "colour": "red", "flag": True}])
    with pytest.raises(RequestError, match="float32") as caught:
        check_frame(pd.DataFrame({"a": [1.0], "b": [-1e39]}), 10)
    assert caught.value.field == "b"


def test_numeric_rows_keep_values_and_make_null_missing() -> None:
    matrix = NUMERIC.numeric_rows([{"a": 1, "b": None}, {"b": 3.5, "a": -2}])
    np.testing.assert_array_equal(matrix[:, 0], [1.0, -2.0])
    assert math.isnan(matrix[0, 1]) and matrix[1, 1] == 3.5


def test_mixed_records_become_a_frame_in_feature_order() -> None:
    frame = MIXED.frame([{"flag": "yes", "colour": "red", "a": 2}])
    assert list(frame.columns) == ["a", "colour", "flag"]
    with pytest.raises(RequestError, match=r"records\[0\]\.a"):
        MIXED.frame([{"flag": True, "colour": "red", "a": "two"}])
    with pytest.raises(RequestError, match=r"records\[0\]\.colour"):
        MIXED.frame([{"flag": True, "colour": {"r": 1}, "a": 2}])


def test_frames_from_the_mlflow_protocol_are_checked() -> None:
    with pytest.raises(RequestError, match="no rows"):
        check_frame(pd.DataFrame({"a": []}), 10)
    with pytest.raises(RequestError) as caught:
        check_frame(pd.DataFrame({"a": [1.0] * 11}), 10)
    assert caught.value.status == 413
    with pytest.raises(RequestError, match="'?b'?"):
        check_frame(pd.DataFrame({"a": [1.0], "b": [math.inf]}), 10)
    check_frame(pd.DataFrame({"a": [1.0, None], "b": ["x", "y"]}), 10)


def _mlflow_matrix(body: bytes, validator: RecordValidator) -> np.ndarray:
    """What MLflow's own scoring-server parser makes of a body, in feature order (MLflow
    decodes an object body with Python's json, then parses it with infer_and_parse_data)."""
    from mlflow.pyfunc import scoring_server

    frame = scoring_server.infer_and_parse_data(json.loads(body))
    return frame[validator.columns].to_numpy(dtype=float)


@pytest.mark.parametrize(
    "body",
    [
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5]]}}',
        b'{"dataframe_split": {"columns": ["b", "a"], "data": [[1, 2.5], [3, -4]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[null, 2.5], [3e38, 0]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[12345678901234567890123, 1]]}}',
    ],
)
def test_split_fast_path_equals_mlflows_parser(body: bytes) -> None:
    ours = NUMERIC.split_matrix(body)
    assert ours is not None and ours.dtype == float
    np.testing.assert_array_equal(ours, _mlflow_matrix(body, NUMERIC))


@pytest.mark.parametrize(
    "body",
    [
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[true, 1]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [["1", 1]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[Infinity, 1]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[NaN, 1]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1], [1, 2]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[[1], 2]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": []}}',
        b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}',
        b'{"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1, 2, 3]]}}',
        b'{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}',
        b'{"dataframe_split": {"columns": ["a", 2], "data": [[1, 2]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}, "params": {}}',
        # an index is checked on MLflow's path (serving.protocol.check_split_rows)
        b'{"dataframe_split": {"index": [7], "columns": ["a", "b"], "data": [[null, 1]]}}',
        b'{"dataframe_split": {"index": [{}], "columns": ["a", "b"], "data": [[1, 2]]}}',
        b'{"dataframe_records": [{"a": 1, "b": 2}]}',
        b'{"dataframe_split": ',
        # beyond float32: MLflow's path, whose checks name the column
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1e308, 0]]}}',
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1%s, 0]]}}' % (b"0" * 400),
    ],
)
def test_anything_but_plain_numbers_goes_to_mlflows_parser(body: bytes) -> None:
    """None sends the body down MLflow's own path, which accepts or names the fault."""
    assert NUMERIC.split_matrix(body) is None


def test_mixed_models_always_use_mlflows_parser() -> None:
    body = b'{"dataframe_split": {"columns": ["a", "colour", "flag"], "data": [[1, 2, 3]]}}'
    assert MIXED.split_matrix(body) is None


def test_user_config_pins_a_version_or_follows_an_alias() -> None:
    options = ServingOptions(model_uri="models:/churn/12")
    assert (options.model_name, options.model_version, options.alias) == ("churn", "12", None)
    following = ServingOptions(model_uri="models:/churn@champion")
    assert (following.model_name, following.model_version) == ("churn", None)
    assert following.alias == "champion" and following.pinned is None
    for uri in ["models:/churn/latest", "runs:/abc/model", "models:/churn@", "models:/@x"]:
        with pytest.raises(ValidationError, match="model_uri"):
            ServingOptions(model_uri=uri)
    with pytest.raises(ValidationError, match="unknown"):
        ServingOptions.model_validate({"model_uri": "models:/m/1", "unknown": 1})


class _Model:
    feature_types = {"mean radius": "numeric", "colour": "categorical", "flag": "boolean"}
    input_example = pd.DataFrame(
        {"mean radius": [np.float64(1.5)], "colour": ["red"], "flag": [np.True_]}
    )
    classes = ["benign", "malignant"]
    uri = "models:/m/3"
    run_id = "abc"


def test_openapi_schemas_come_from_the_model() -> None:
    base = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "description": "d"},
        "paths": {"/predict": {"post": {}}, "/invocations": {"post": {}}},
    }
    spec = with_model_schemas(base, _Model())
    record = spec["components"]["schemas"]["Record"]
    assert record["properties"]["mean radius"]["type"] == ["number", "null"]
    assert record["properties"]["colour"]["type"] == ["string", "null"]
    assert record["properties"]["flag"]["type"] == ["boolean", "null"]
    assert record["required"] == list(_Model.feature_types)
    assert record["example"] == {"mean radius": 1.5, "colour": "red", "flag": True}
    invocations = spec["components"]["schemas"]["InvocationsRequest"]
    assert {next(iter(v["required"])) for v in invocations["oneOf"]} == {
        "dataframe_split",
        "dataframe_records",
        "instances",
        "inputs",
    }
    split = next(v for v in invocations["oneOf"] if "dataframe_split" in v["required"])
    assert split["properties"]["dataframe_split"]["additionalProperties"] is False
    assert "models:/m/3" in spec["info"]["description"]
    content = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv"}


def test_openapi_states_the_bounds_the_server_enforces() -> None:
    base = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "description": "d"},
        "paths": {"/predict": {"post": {}}, "/invocations": {"post": {}}},
    }
    spec = with_model_schemas(base, _Model(), RequestLimits(max_rows=7, max_bytes=4096))
    radius = spec["components"]["schemas"]["Record"]["properties"]["mean radius"]
    assert (radius["minimum"], radius["maximum"]) == (-FLOAT32_MAX, FLOAT32_MAX)
    for path in ["/predict", "/invocations"]:
        operation = spec["paths"][path]["post"]
        assert {"400", "413", "415", "422", "503"} <= set(operation["responses"])
        too_large = operation["responses"]["413"]["description"]
        assert "7 rows" in too_large and "4096 bytes" in too_large


def test_the_committed_serve_config_renders_for_a_version(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        mlflow_tracking_uri="http://mlflow:5000",
        serve_port=8123,
        max_batch_rows=500,
    )
    committed = read_config(CONFIG)
    rendered = render_config(
        committed, model_uri="models:/m/7", settings=settings, num_replicas=2, num_cpus=0.5
    )
    deployment = model_deployment(rendered)
    assert deployment["user_config"]["model_uri"] == "models:/m/7"
    assert deployment["user_config"]["max_request_rows"] == 500
    assert deployment["num_replicas"] == 2
    assert deployment["ray_actor_options"]["num_cpus"] == 0.5
    assert rendered["http_options"]["port"] == 8123
    env = rendered["applications"][0]["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert not any("TOKEN" in name or "PASSWORD" in name for name in env)
    assert model_deployment(committed)["user_config"]["model_uri"] != "models:/m/7"  # a copy
    assert rendered["applications"][0]["import_path"] == "serving.app:app"
    assert rendered["logging_config"]["enable_access_log"] is False


def test_a_config_without_the_model_app_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "other", "import_path": "x:y"}]}))
    with pytest.raises(ServeError, match="ModelServer"):
        model_deployment(read_config(path))
    with pytest.raises(ServeError, match="no such"):
        read_config(tmp_path / "missing.yaml")


def test_booleans_in_numeric_columns_of_mlflow_frames_are_refused() -> None:
    for column in ([True], [1.5, False]):
        with pytest.raises(RequestError) as caught:
            NUMERIC.check_no_booleans(pd.DataFrame({"a": [1.0] * len(column), "b": column}))
        assert caught.value.field == "b" and "boolean" in caught.value.message
    NUMERIC.check_no_booleans(pd.DataFrame({"a": [1.0], "b": [None]}))
    MIXED.check_no_booleans(pd.DataFrame({"a": [1.0], "colour": ["x"], "flag": [True]}))
