"""serving.protocol: `/predict` and MLflow `/invocations` bodies in and out, against a real
fitted model (no server)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from starlette.requests import Request

from ml.data import DataError
from serving.model import Rows, Scored, ServedModel
from serving.protocol import (
    LARGE_BODY_BYTES,
    as_input_frame,
    as_request_error,
    invocation_rows,
    invocations_body,
    media_type,
    mlflow_code,
    mlflow_error_body,
    mlflow_frame,
    mlflow_json,
    mlflow_status,
    model_rows,
    parse_json,
    predict_body,
    read_body,
    require_content_type,
)
from serving.schemas import RequestError
from tests.unit.serving_support import demo_model, demo_rows, mixed_model, mixed_records

JSON = "application/json"
CSV = "text/csv"


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel.of(demo_model())


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return demo_rows(5)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _parse(model: ServedModel, content_type: str, body: bytes, max_rows: int = 100) -> Rows:
    """What `/invocations` does with a body before scoring it."""

    async def parse() -> Rows:
        inputs = await invocation_rows(model, content_type, body, max_rows)
        return await model_rows(model, inputs, batch_size=64)

    return asyncio.run(parse())


# --- content types and JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json", JSON),
        ("Application/JSON; charset=utf-8", JSON),
        (" text/csv ;header=present", CSV),
        ("", ""),
    ],
)
def test_media_type_drops_parameters_and_case(header: str, expected: str) -> None:
    assert media_type(header) == expected


def test_the_expected_content_type_passes_with_parameters() -> None:
    require_content_type("application/json; charset=utf-8", JSON)


@pytest.mark.parametrize(("header", "named"), [("text/plain", "'text/plain'"), ("", "'none'")])
def test_another_content_type_is_415(header: str, named: str) -> None:
    with pytest.raises(RequestError) as caught:
        require_content_type(header, JSON)
    assert (caught.value.status, caught.value.field) == (415, "content-type")
    assert named in caught.value.message


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_an_empty_predict_body_is_422(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert (caught.value.status, caught.value.field) == (422, "body")
    assert "empty" in caught.value.message


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_400(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert (caught.value.status, caught.value.field) == (400, "body")


def test_json_is_parsed() -> None:
    assert parse_json(b'[{"a": 1}]') == [{"a": 1}]


NESTING_BOMB = b"[" * 100_000


def test_a_json_nesting_bomb_is_400_not_a_recursion_error(model: ServedModel) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(NESTING_BOMB)
    assert (caught.value.status, caught.value.field) == (400, "body")
    assert "nested too deeply" in caught.value.message
    with pytest.raises(RequestError) as via_mlflow:
        _parse(model, JSON, NESTING_BOMB)
    assert via_mlflow.value.status == 400
    assert "nested too deeply" in via_mlflow.value.message


def _streamed(chunks: list[bytes], headers: dict[str, str]) -> tuple[Request, list[bytes]]:
    """A real Starlette request whose body arrives in `chunks`; the list records what was
    received."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    received: list[bytes] = []

    async def receive() -> dict[str, Any]:
        message = pending.pop(0)
        received.append(message["body"])
        return message

    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "headers": raw}, receive), received


def test_a_body_within_the_limit_is_read_whole() -> None:
    request, _ = _streamed([b'{"a": ', b"1}"], {})
    assert asyncio.run(read_body(request, max_bytes=11)) == b'{"a": 1}'


def test_a_declared_length_over_the_limit_is_413_before_a_byte_is_read() -> None:
    request, received = _streamed([b"x" * 100], {"content-length": "100"})
    with pytest.raises(RequestError) as caught:
        asyncio.run(read_body(request, max_bytes=99))
    assert (caught.value.status, caught.value.field) == (413, "body")
    assert "99 bytes" in caught.value.message and "max_request_bytes" in caught.value.message
    assert received == []


def test_a_streamed_body_over_the_limit_is_413_at_the_chunk_that_crosses_it() -> None:
    request, received = _streamed([b"x" * 60, b"x" * 60, b"x" * 60], {})
    with pytest.raises(RequestError) as caught:
        asyncio.run(read_body(request, max_bytes=100))
    assert caught.value.status == 413
    assert len(received) == 2  # the third chunk was never asked for


# --- /invocations: MLflow's four JSON formats and CSV ----------------------------------------


def _formats(rows: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    records = _records(rows)
    split = json.loads(rows.to_json(orient="split", index=False))
    in_order = [[record[column] for column in rows.columns] for record in records]
    columns = {column: list(rows[column]) for column in rows.columns}
    return {
        "dataframe_split": (JSON, _body({"dataframe_split": split})),
        "dataframe_split, columns shuffled": (
            JSON,
            _body(
                {
                    "dataframe_split": json.loads(
                        rows[rows.columns[::-1]].to_json(orient="split", index=False)
                    )
                }
            ),
        ),
        "dataframe_records": (JSON, _body({"dataframe_records": records})),
        "instances as records": (JSON, _body({"instances": records})),
        "instances as lists": (JSON, _body({"instances": in_order})),
        "inputs as records": (JSON, _body({"inputs": records})),
        "inputs as columns": (JSON, _body({"inputs": columns})),
        "with params": (JSON, _body({"dataframe_records": records, "params": {"x": 1}})),
        "csv": (CSV, rows.to_csv(index=False).encode()),
        "csv; charset": (f"{CSV}; charset=utf-8", rows.to_csv(index=False).encode()),
    }


FORMATS = list(_formats(demo_rows(1)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_mlflow_format_gives_the_rows_in_feature_order(
    model: ServedModel, rows: pd.DataFrame, fmt: str
) -> None:
    content_type, body = _formats(rows)[fmt]
    parsed = _parse(model, content_type, body)
    assert isinstance(parsed, np.ndarray)  # the numeric fast path: a float matrix
    np.testing.assert_allclose(parsed, rows[model.validator.columns].to_numpy(dtype=float))


def test_a_large_split_body_gives_the_same_matrix(model: ServedModel) -> None:
    """Bodies over LARGE_BODY_BYTES are parsed in a worker thread: same result."""
    rows = demo_rows(400)
    body = _body({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
    assert len(body) > LARGE_BODY_BYTES
    np.testing.assert_allclose(_parse(model, JSON, body, 1000), rows.to_numpy(dtype=float))


def test_mixed_features_arrive_as_the_models_typed_frame() -> None:
    model = ServedModel.of(mixed_model())
    rows = mixed_records(4)
    parsed = _parse(model, JSON, _body({"dataframe_records": _records(rows)}))
    assert isinstance(parsed, pd.DataFrame)
    assert list(parsed.columns) == model.validator.columns
    np.testing.assert_allclose(model.predict_proba(parsed), model.loaded.predict_proba(rows))


@pytest.mark.parametrize(
    ("content_type", "body", "status", "field"),
    [
        ("application/xml", b"<rows/>", 415, "content-type"),
        ("", b"{}", 415, "content-type"),
        (JSON, b"", 400, "body"),
        (CSV, b"   ", 400, "body"),
        (CSV, b"\xff\xfe,1\n", 400, "body"),
    ],
)
def test_bad_invocations_content_is_a_4xx(
    model: ServedModel, content_type: str, body: bytes, status: int, field: str
) -> None:
    with pytest.raises(RequestError) as caught:
        mlflow_frame(content_type, body, model.validator.columns)
    assert (caught.value.status, caught.value.field) == (status, field)


@pytest.mark.parametrize(
    "payload",
    [
        [{"mean radius": 1.0}],  # a top-level list
        {"rows": []},  # no format key
        {"inputs": [], "instances": []},  # two format keys
    ],
)
def test_bodies_mlflow_refuses_keep_mlflows_400(model: ServedModel, payload: Any) -> None:
    with pytest.raises(MlflowException) as caught:
        mlflow_frame(JSON, _body(payload), model.validator.columns)
    assert caught.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    "body",
    [b'{"dataframe_split": ', b"\xff\xfe{}", b"not json", b"[1, 2]", b'"a string"', b"7"],
)
def test_malformed_or_non_object_json_is_mlflows_400(model: ServedModel, body: bytes) -> None:
    """The error MLflow's own scoring server gives: its exception, answered as 400 with
    `error_code` BAD_REQUEST and its wording."""
    with pytest.raises(MlflowException) as caught:
        mlflow_frame(JSON, body, model.validator.columns)
    assert caught.value.get_http_status_code() == 400
    error = json.loads(caught.value.serialize_as_json())
    assert error["error_code"] == "BAD_REQUEST"
    assert error["message"].startswith("Invalid input. ")


@pytest.mark.parametrize(
    "body",
    [
        b'{"dataframe_records": [{"a": 1.5, "b": null}]}',
        # orjson refuses these; MLflow (Python's json) reads them, and so do we
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[NaN, 1], [Infinity, -Infinity]]}}',
        b'{"inputs": {"a": [1e400], "b": [2]}}',
        b'{"instances": [[12345678901234567890123, 1]], "params": {"x": 1}}',
    ],
)
def test_json_decodes_as_mlflows_decoder_does(body: bytes) -> None:
    """MLflow's scoring server decodes with Python's json: the reference."""
    ours, reference = mlflow_json(body), json.loads(body)
    assert json.dumps(ours) == json.dumps(reference)


def test_a_nested_value_is_400_and_named_in_the_message() -> None:
    with pytest.raises(RequestError) as caught:
        as_input_frame([{"a": np.array(1.0), "b": np.array([1.0, 2.0])}], ["a", "b"])
    assert (caught.value.status, caught.value.field) == (400, "body")
    assert "b: must be a single value" in caught.value.message


def test_rows_of_the_wrong_width_are_400() -> None:
    with pytest.raises(RequestError) as caught:
        as_input_frame([[1.0, 2.0, 3.0]], ["a", "b"])
    assert caught.value.status == 400
    assert "rows of 2 values in feature order" in caught.value.message


def test_records_with_0d_arrays_become_plain_values() -> None:
    frame = as_input_frame([{"a": np.array(1.5), "b": 2}], ["a", "b"])
    assert frame.to_dict("records") == [{"a": 1.5, "b": 2}]


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records"])
def test_over_the_row_limit_is_413(model: ServedModel, rows: pd.DataFrame, fmt: str) -> None:
    content_type, body = _formats(rows)[fmt]
    with pytest.raises(RequestError) as caught:
        _parse(model, content_type, body, max_rows=len(rows) - 1)
    assert caught.value.status == 413


def test_no_rows_is_an_error(model: ServedModel) -> None:
    with pytest.raises(RequestError) as caught:
        _parse(model, JSON, _body({"dataframe_records": []}))
    assert caught.value.field == "body"
    assert mlflow_status(caught.value) == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [({"mean radius": "big"}, "mean radius"), ({"colour": 1}, "colour")],
    ids=["wrong type", "unknown feature"],
)
def test_bad_values_name_the_feature(
    model: ServedModel, rows: pd.DataFrame, change: dict[str, Any], field: str
) -> None:
    record = _records(rows.head(1))[0] | change
    with pytest.raises((RequestError, DataError)) as caught:
        _parse(model, JSON, _body({"dataframe_records": [record]}))
    error = as_request_error(caught.value)
    assert error.field == field
    assert field in str(error)


def test_a_missing_feature_is_named(model: ServedModel, rows: pd.DataFrame) -> None:
    record = _records(rows.head(1))[0]
    del record["worst area"]
    with pytest.raises(DataError) as caught:
        _parse(model, JSON, _body({"dataframe_records": [record]}))
    assert as_request_error(caught.value).field == "worst area"


# --- answers ---------------------------------------------------------------------------------


def test_predict_body_has_an_id_label_and_probabilities_per_row(model: ServedModel) -> None:
    rows = demo_rows(3).to_numpy(dtype=float)
    scored = Scored(model, model.predict_proba(rows))
    body = predict_body(scored, ["id-a", "id-b", "id-c"])
    assert (body["model_name"], body["model_version"]) == ("demo", "1")
    assert [row["prediction_id"] for row in body["predictions"]] == ["id-a", "id-b", "id-c"]
    assert [row["label"] for row in body["predictions"]] == scored.labels
    first = body["predictions"][0]["probabilities"]
    assert list(first) == ["benign", "malignant"]
    assert [first["benign"], first["malignant"]] == scored.proba[0].tolist()
    json.dumps(body)  # plain JSON values only


def test_numpy_labels_are_plain_json() -> None:
    """Classes read from the estimator (`classes_`) are numpy scalars; JSON needs bools."""
    model = ServedModel.of(replace(mixed_model(), classes=list(np.array([False, True]))))
    rows = model.input_rows(_records(mixed_records(2)))
    scored = Scored(model, model.predict_proba(rows))
    body = invocations_body(scored)
    assert all(type(label) is bool for label in body["predictions"])  # not numpy.bool_
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize(
    ("status", "mlflow", "code"),
    [
        (422, 400, "BAD_REQUEST"),
        (400, 400, "BAD_REQUEST"),
        (413, 413, "RESOURCE_LIMIT_EXCEEDED"),
        (415, 415, "BAD_REQUEST"),
        (503, 503, "TEMPORARILY_UNAVAILABLE"),
    ],
)
def test_mlflow_errors_carry_a_code_and_the_message(status: int, mlflow: int, code: str) -> None:
    error = RequestError("body", "what went wrong", status)
    assert mlflow_status(error) == mlflow
    assert mlflow_code(mlflow) == code
    assert mlflow_error_body(error) == {"error_code": code, "message": "body: what went wrong"}


def test_a_data_error_becomes_a_422_naming_its_column() -> None:
    error = as_request_error(DataError("unknown feature columns ['colour']"))
    assert (error.status, error.field) == (422, "colour")
    same = RequestError("x", "y", 413)
    assert as_request_error(same) is same


def test_instances_mixing_null_and_numbers_are_rows_not_nested_values(
    model: ServedModel, rows: pd.DataFrame
) -> None:
    """MLflow's parser gives such columns as 0-d arrays (found by schemathesis, seed 2026)."""
    records = _records(rows.head(2))
    first = rows.columns[0]
    records[0][first] = None
    parsed = _parse(model, JSON, _body({"instances": records}))
    assert len(parsed) == 2


def test_params_that_are_not_an_object_are_400(model: ServedModel, rows: pd.DataFrame) -> None:
    with pytest.raises(RequestError) as caught:
        _parse(model, JSON, _body({"inputs": _records(rows.head(1)), "params": 3}))
    assert (caught.value.status, caught.value.field) == (400, "params")


def test_an_unknown_top_level_key_is_400_naming_it(model: ServedModel, rows: pd.DataFrame) -> None:
    with pytest.raises(RequestError) as caught:
        _parse(model, JSON, _body({"dataframe_records": _records(rows.head(1)), "extra": 1}))
    assert (caught.value.status, caught.value.field) == (400, "extra")


def test_split_rows_that_are_not_arrays_are_400(model: ServedModel) -> None:
    split = {"columns": model.validator.columns, "data": [{}]}
    with pytest.raises(RequestError) as caught:
        _parse(model, JSON, _body({"dataframe_split": split}))
    assert (caught.value.status, caught.value.field) == (400, "dataframe_split.data")


@pytest.mark.parametrize("index", [[{}], [True], "7", 7, [[1]]])
def test_a_split_index_that_is_not_labels_is_400_on_either_path(
    model: ServedModel, index: object
) -> None:
    """Through `invocation_rows` (the fast path defers an index): found by schemathesis."""
    split = {"index": index, "columns": model.validator.columns, "data": [[1.0] * 30]}
    with pytest.raises(RequestError) as caught:
        _parse(model, JSON, _body({"dataframe_split": split}))
    assert (caught.value.status, caught.value.field) == (400, "dataframe_split.index")


@pytest.mark.parametrize("index", [[7], ["a"], [], [1, 2]])
def test_a_split_with_labels_as_index_is_scored_in_row_order(
    model: ServedModel, index: list[object]
) -> None:
    """Labels never change the answer, however many (the schema cannot tie their count to
    the rows, so a count that differs is not refused)."""
    split = {"index": index, "columns": model.validator.columns, "data": [[1.0] * 30]}
    assert len(_parse(model, JSON, _body({"dataframe_split": split}))) == 1
