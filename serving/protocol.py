"""The HTTP protocol of the scoring routes: content types, request bodies in, response bodies
out, for `/predict` (records keyed by feature name) and MLflow's `/invocations`.

MLflow's protocol is parsed with MLflow's own public scoring-server functions
(`infer_and_parse_data`, `parse_csv_input`) after a JSON decode that reads bodies as MLflow's
does (`mlflow_json`), so it is exactly theirs; only the plain numeric `dataframe_split` takes
a faster path to the same matrix.
"""

from __future__ import annotations

import asyncio
import json
import re
from io import StringIO
from typing import Any

import numpy as np
import orjson
import pandas as pd
from starlette.requests import Request

from ml.data import DataError
from serving.model import Rows, Scored, ServedModel
from serving.schemas import RequestError, check_frame, check_row_count, data_error_field

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
MLFLOW_KEYS = {"dataframe_split", "dataframe_records", "instances", "inputs", "params"}
LARGE_BODY_BYTES = 64 * 1024  # parsed in a worker thread, so the event loop keeps serving
LONG_INTEGER = re.compile(rb"\d{20}")  # orjson reads integers beyond 64 bits as floats


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";")[0].strip().lower()


def require_content_type(content_type: str, expected: str) -> None:
    """415 naming what came, for a body that is not `expected`."""
    if media_type(content_type) != expected:
        raise RequestError(
            "content-type", f"expected {expected}, got {content_type or 'none'!r}", 415
        )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, read while it streams in and refused (413) as soon as it is over
    `max_bytes`: a declared Content-Length over it before reading a byte, a chunked body at
    the chunk that crosses it. So no body over the limit is ever held in full."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(max_bytes)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise body_too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)  # one chunk (the usual small body) is returned without a copy


def body_too_large(max_bytes: int) -> RequestError:
    return RequestError(
        "body", f"over the limit of {max_bytes} bytes a request (max_request_bytes)", 413
    )


def parse_json(body: bytes) -> Any:
    """A `/predict` body: empty is a 422 (nothing to score), malformed or nested too deep for
    the parser (a `[[[[...` bomb) a 400."""
    if not body.strip():
        raise RequestError("body", "the request body is empty")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"not valid JSON: {exc}", 400) from exc
    except RecursionError as exc:
        raise too_deep() from exc


def too_deep() -> RequestError:
    """json's C parser raises RecursionError past about 1,000 levels; no record nests so."""
    return RequestError("body", "JSON nested too deeply", 400)


def as_request_error(error: RequestError | DataError) -> RequestError:
    """The model's own coercion errors (`DataError`) as a 422 naming the column at fault."""
    if isinstance(error, RequestError):
        return error
    return RequestError(data_error_field(error), str(error))


# --- /invocations: MLflow's scoring protocol ---------------------------------------------


async def invocation_rows(
    model: ServedModel, content_type: str, body: bytes, max_rows: int
) -> Rows:
    """The plain numeric `dataframe_split` straight to a matrix; every other body through
    MLflow's own parser. Either way within the row limit."""
    matrix = None
    if media_type(content_type) == JSON_TYPE:
        matrix = (
            await asyncio.to_thread(model.validator.split_matrix, body)
            if len(body) > LARGE_BODY_BYTES
            else model.validator.split_matrix(body)
        )
    if matrix is None:
        frame = mlflow_frame(content_type, body, model.validator.columns)
        check_frame(frame, max_rows)
        model.validator.check_no_booleans(frame)
        return frame
    check_row_count(len(matrix), max_rows)
    return matrix


async def model_rows(model: ServedModel, inputs: Rows, batch_size: int) -> Rows:
    """Parsed rows as model input: a matrix as it is, a frame through `frame_rows` (in a
    worker thread when larger than a batch, so the event loop keeps serving)."""
    if isinstance(inputs, np.ndarray):
        return inputs
    if len(inputs) > batch_size:
        return await asyncio.to_thread(model.frame_rows, inputs)
    return model.frame_rows(inputs)


def mlflow_frame(content_type: str, body: bytes, columns: list[str]) -> pd.DataFrame:
    """Parse with MLflow's own scoring-server functions, so the protocol is exactly theirs."""
    from mlflow.pyfunc import scoring_server

    mime = media_type(content_type)
    if not body.strip():
        raise RequestError("body", "the request body is empty", 400)
    if mime == CSV_TYPE:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError("body", "CSV must be UTF-8", 400) from exc
        return scoring_server.parse_csv_input(StringIO(text))
    if mime != JSON_TYPE:
        raise RequestError(
            "content-type",
            f"expected {JSON_TYPE} or {CSV_TYPE}, got " f"{content_type or 'none'!r}",
            415,
        )
    try:
        decoded = mlflow_json(body)
        unknown = sorted(set(decoded) - MLFLOW_KEYS)
        # MLflow's parser ignores them next to a format key (and names the fault without one)
        if unknown and len(unknown) < len(decoded):
            raise RequestError(
                unknown[0], f"unknown key: expected one of {sorted(MLFLOW_KEYS)}", 400
            )
        if not isinstance(decoded.get("params", {}), dict):
            raise RequestError("params", "must be an object", 400)
        data = {key: value for key, value in decoded.items() if key != "params"}
        if isinstance(split := decoded.get("dataframe_split"), dict):
            check_split_rows(split)
            # Row labels do not change a prediction (answers come in row order), and pandas
            # refuses labels that are fewer or more than the rows, which the schema allows.
            data["dataframe_split"] = {k: v for k, v in split.items() if k != "index"}
        return as_input_frame(scoring_server.infer_and_parse_data(data), columns)
    except RecursionError as exc:  # json.loads, or numpy/pandas walking nested lists
        raise too_deep() from exc


def check_split_rows(split: dict[str, Any]) -> None:
    """What the schema says of `dataframe_split` and MLflow's parser does not check (found by
    schemathesis): rows are arrays (it takes objects, `[{}]`, as a row of nothing), and an
    index is a list of string or integer labels."""
    data = split.get("data")
    if isinstance(data, list) and not all(isinstance(row, list) for row in data):
        raise RequestError("dataframe_split.data", "each row must be an array of values", 400)
    index = split.get("index", [])
    if not isinstance(index, list) or not all(_is_label(item) for item in index):
        raise RequestError("dataframe_split.index", "each label must be a string or integer", 400)


def _is_label(item: Any) -> bool:
    """A row label the schema allows: a string or an integer (JSON booleans are not)."""
    return isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))


def mlflow_json(body: bytes) -> dict[str, Any]:
    """A JSON body as MLflow's scoring server decodes it: an object, else MLflow's 400.

    orjson first (the common case, faster). Python's json (MLflow's decoder) for what orjson
    reads differently: it refuses the NaN/Infinity literals and numbers beyond a double, and
    reads integers of 20 digits or more (beyond 64 bits) as floats. So answers stay MLflow's.
    Errors are MLflow's own exception with MLflow's wording, answered as MLflow's error body;
    the body itself is not echoed back.
    """
    decoded = _orjson_or_none(body)
    if decoded is None:
        try:
            decoded = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _mlflow_bad_input(
                f"Ensure that input is a valid JSON formatted string. Error: '{exc!r}'"
            ) from exc
    if isinstance(decoded, dict):
        return decoded
    received = "a list" if isinstance(decoded, list) else f"unexpected input type '{type(decoded)}"
    raise _mlflow_bad_input(f"{_required_input_format()}. Received {received}.")


def _orjson_or_none(body: bytes) -> Any:
    """orjson's reading of `body`; None where it differs from json's or refuses the body
    (a JSON `null` body is None either way, and not an object)."""
    if LONG_INTEGER.search(body):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _mlflow_bad_input(message: str) -> Exception:
    """MLflow's invalid-input error (400, BAD_REQUEST), built from its public exception."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    return MlflowException(f"Invalid input. {message}", error_code=BAD_REQUEST)


def _required_input_format() -> str:
    from mlflow.pyfunc.scoring_server import REQUIRED_INPUT_FORMAT

    return str(REQUIRED_INPUT_FORMAT)


def as_input_frame(parsed: Any, columns: list[str]) -> pd.DataFrame:
    """What MLflow's parser returns for the four JSON formats -> one frame of rows: a frame
    (dataframe_*), a dict of columns (instances/inputs as columns), a list of records with 0-d
    arrays (inputs as records), or a matrix (instances/inputs as lists, in feature order)."""
    try:
        if isinstance(parsed, pd.DataFrame):
            return parsed
        if isinstance(parsed, dict):
            return pd.DataFrame({key: column(value) for key, value in parsed.items()})
        if isinstance(parsed, list) and all(isinstance(row, dict) for row in parsed):
            return pd.DataFrame.from_records([scalars(row) for row in parsed])
        matrix = np.asarray(parsed)
        if matrix.ndim == 2 and matrix.shape[1] == len(columns):
            return pd.DataFrame(matrix, columns=columns)
    except (ValueError, TypeError) as exc:
        raise RequestError("body", f"cannot be read as rows of features: {exc}", 400) from exc
    raise RequestError(
        "body",
        f"expected records keyed by feature name, or rows of "
        f"{len(columns)} values in feature order",
        400,
    )


def column(values: Any) -> np.ndarray:
    """A column MLflow's parser built: where records mix null and numbers, it holds 0-d
    arrays (`array(None, dtype=object)`); those are plain values, not nested ones."""
    values = np.atleast_1d(values)
    if values.dtype != object:
        return values
    return np.array(
        [v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v for v in values], dtype=object
    )


def scalars(row: dict[str, Any]) -> dict[str, Any]:
    """A record whose values are 0-d arrays -> plain values; a nested value is a 400."""
    values = {}
    for key, value in row.items():
        if np.ndim(value) != 0:
            raise RequestError(str(key), "must be a single value", 400)
        values[key] = value.item() if isinstance(value, np.ndarray) else value
    return values


# --- response bodies ----------------------------------------------------------------------


def predict_body(scored: Scored, ids: list[str]) -> dict[str, Any]:
    """`/predict` and `/ws/predict`: per row its id, label and every class's probability; a
    regressor's rows their id and value."""
    loaded = scored.model.loaded
    if scored.model.regressor:
        values = [
            {"prediction_id": prediction_id, "value": value}
            for prediction_id, value in zip(ids, scored.values)
        ]
        return {"model_name": loaded.name, "model_version": loaded.version, "predictions": values}
    class_names = [str(label) for label in scored.model.classes]
    labels = plain_list(scored.labels)
    predictions = [
        {
            "prediction_id": prediction_id,
            "label": label,
            "probabilities": dict(zip(class_names, row)),
        }
        for prediction_id, label, row in zip(ids, labels, scored.proba.tolist())
    ]
    return {"model_name": loaded.name, "model_version": loaded.version, "predictions": predictions}


def invocations_body(scored: Scored) -> dict[str, Any]:
    """MLflow's answer: the labels only (a regressor's values)."""
    return {"predictions": plain_list(scored.labels)}


def plain_list(values: list[Any]) -> list[Any]:
    """numpy scalars (e.g. `numpy.bool_` labels) as the JSON values they hold."""
    return [value.item() if isinstance(value, np.generic) else value for value in values]


def mlflow_status(error: RequestError) -> int:
    """MLflow answers a bad value with 400 where `/predict` says 422."""
    return error.status if error.status != 422 else 400


def mlflow_error_body(error: RequestError) -> dict[str, str]:
    """MLflow's error shape: `error_code` and `message`."""
    return {"error_code": mlflow_code(mlflow_status(error)), "message": str(error)}


def mlflow_code(status: int) -> str:
    """MLflow's `error_code` for an HTTP status."""
    return {413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}.get(
        status, "BAD_REQUEST"
    )


def feedback_items(body: bytes, max_items: int) -> list[tuple[str, Any]]:
    """`{"prediction_id": ..., "label": ...}` or a list of them -> (id, label) pairs; the
    error names the item and field at fault."""
    parsed = parse_json(body)
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise RequestError("body", "no outcomes: send an object or a non-empty list")
    if len(items) > max_items:
        raise RequestError("body", f"{len(items)} outcomes, at most {max_items} a request", 413)
    return [_feedback_item(item, f"items[{index}]") for index, item in enumerate(items)]


def _feedback_item(item: Any, where: str) -> tuple[str, Any]:
    if not isinstance(item, dict):
        raise RequestError(where, "must be an object with prediction_id and label")
    unknown = sorted(set(item) - {"prediction_id", "label"})
    if unknown:
        raise RequestError(f"{where}.{unknown[0]}", "unknown field")
    prediction_id = item.get("prediction_id")
    if not isinstance(prediction_id, str) or not prediction_id or len(prediction_id) > 64:
        raise RequestError(f"{where}.prediction_id", "must be the id /predict answered")
    label = item.get("label")
    if label is None or isinstance(label, (dict, list)):
        raise RequestError(f"{where}.label", "must be a string, number or boolean")
    return prediction_id, label
