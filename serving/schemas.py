"""Request validation and the OpenAPI schemas, both driven by the served model's features.

The model's `feature_types` (saved with it, keyed like its signature's columns) decide what a
record may hold; the same map builds the JSON schema that `/docs` shows. Validation is written
for speed (a plain loop over JSON values, no per-request pydantic model): it is on the hot path
of every prediction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
from pydantic import BaseModel, Field, field_validator

from ml.common.values import plain, some
from ml.data import DataError, FeatureType
from ml.model_ref import ModelRef

if TYPE_CHECKING:
    from ml.predict import LoadedModel

# An alias in a models:/ URI (MLflow's own form); a version is parsed by ModelRef.
ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[A-Za-z_][A-Za-z0-9_-]*)")
# Bodies larger than this are refused (413) while they stream in: 10,000 rows of a few dozen
# features in `dataframe_split` are a few MB.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Tree models compute in float32: a larger number becomes infinity and is refused (422), so
# the schema bounds numbers to float32's range rather than promise what the model refuses.
FLOAT32_MAX = float(np.finfo(np.float32).max)
_JSON_TYPES: dict[FeatureType, dict[str, Any]] = {
    "numeric": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    "boolean": {"type": "boolean"},
    "categorical": {"type": "string"},
}


class RequestError(ValueError):
    """A client mistake: `field` names what is at fault, the message says why (-> HTTP 4xx)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"detail": str(self), "field": self.field}


class ServingOptions(BaseModel):
    """The deployment's `user_config`: changing any of it rolls the replicas in place."""

    model_config = {"extra": "forbid"}

    model_uri: str = Field(
        description="models:/<name>/<version> (pinned) or models:/<name>@<alias> (followed: "
        "each replica re-resolves the alias every alias_poll_s and swaps in place)"
    )
    max_batch_size: int = Field(64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0)
    max_request_rows: int = Field(10_000, ge=1)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    alias_poll_s: float = Field(15.0, gt=0.0, le=3600.0)

    @field_validator("model_uri")
    @classmethod
    def _version_or_alias(cls, value: str) -> str:
        if ALIAS_URI.fullmatch(value) is None:
            ModelRef.parse(value)  # its ValueError says what is wrong with the URI
        return value

    @property
    def alias(self) -> str | None:
        """The alias replicas follow, or None for a pinned version."""
        match = ALIAS_URI.fullmatch(self.model_uri)
        return match["alias"] if match else None

    @property
    def model_name(self) -> str:
        match = ALIAS_URI.fullmatch(self.model_uri)
        return match["name"] if match else ModelRef.parse(self.model_uri).name

    @property
    def model_version(self) -> str | None:
        """The pinned version number, or None when following an alias."""
        pinned = self.pinned
        return pinned.version if pinned else None

    @property
    def pinned(self) -> ModelRef | None:
        """The pinned version, or None when following an alias."""
        return None if self.alias else ModelRef.parse(self.model_uri)


@dataclass(frozen=True)
class RecordValidator:
    """Checks JSON records against the model's features and builds the model's input."""

    feature_types: dict[str, FeatureType]

    @property
    def columns(self) -> list[str]:
        return list(self.feature_types)

    @property
    def all_numeric(self) -> bool:
        return all(kind == "numeric" for kind in self.feature_types.values())

    def records(self, body: Any, max_rows: int) -> list[dict[str, Any]]:
        """One record (an object) or a list of records -> a non-empty list of objects."""
        records = [body] if isinstance(body, dict) else body
        if not isinstance(records, list):
            raise RequestError("body", "expected a JSON object (one record) or a list of them")
        if not records:
            raise RequestError("body", "the list of records is empty")
        if len(records) > max_rows:
            raise RequestError(
                "body", f"{len(records)} records is over the limit of {max_rows} per request", 413
            )
        expected = self.feature_types.keys()
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise RequestError(f"records[{index}]", "expected an object keyed by feature name")
            if record.keys() != expected:
                self._report_keys(index, record)
        return records

    def _report_keys(self, index: int, record: dict[str, Any]) -> None:
        unknown = sorted(set(record) - set(self.feature_types))
        if unknown:
            raise RequestError(
                f"records[{index}].{unknown[0]}", f"unknown feature(s) {some(unknown)}"
            )
        missing = [column for column in self.feature_types if column not in record]
        raise RequestError(f"records[{index}].{missing[0]}", f"missing feature(s) {some(missing)}")

    def numeric_rows(self, records: list[dict[str, Any]]) -> np.ndarray:
        """All-numeric models: the rows as a float matrix; null is missing (imputed)."""
        columns = self.columns
        matrix = np.empty((len(records), len(columns)), dtype=float)
        for row_index, record in enumerate(records):
            row = matrix[row_index]
            for column_index, column in enumerate(columns):
                value = record[column]
                if value is None:
                    row[column_index] = math.nan
                elif type(value) is float or type(value) is int:  # noqa: E721 - bool excluded
                    # False for NaN and infinity too: one comparison does both checks
                    if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
                        raise RequestError(f"records[{row_index}].{column}", out_of_range(value))
                    row[column_index] = value
                else:
                    raise RequestError(
                        f"records[{row_index}].{column}", f"must be a number, got {value!r}"
                    )
        return matrix

    def split_matrix(self, body: bytes) -> np.ndarray | None:
        """A JSON body `{"dataframe_split": {"columns": [...], "data": [[...]]}}` (MLflow's
        scoring protocol) as a float matrix in feature order, without pandas, when it is the
        plain case: an all-numeric model, exactly its columns, rows of numbers or nulls.
        None otherwise, and the body then goes through MLflow's own parser, whose results and
        errors are the reference (tests/unit/test_serving_schemas.py: both give one matrix)."""
        # numpy would read JSON's true/false as 1/0; MLflow's path decides what they mean.
        if not self.all_numeric or b"true" in body or b"false" in body:
            return None
        try:
            payload = orjson.loads(body)  # strict JSON: NaN/Infinity literals go MLflow's way
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or payload.keys() != {"dataframe_split"}:
            return None
        split = payload["dataframe_split"]
        # An `index` goes MLflow's way, where serving.protocol.check_split_rows checks it: this
        # path would ignore it (schemathesis found `index: [{}]` scored with a 200).
        if not isinstance(split, dict) or not split.keys() <= {"columns", "data"}:
            return None
        columns, data = split.get("columns"), split.get("data")
        if (
            not isinstance(columns, list)
            or not all(isinstance(column, str) for column in columns)
            or sorted(columns) != sorted(self.columns)
        ):
            return None
        return self._numeric_matrix(data, columns)

    def _numeric_matrix(self, data: Any, columns: list[str]) -> np.ndarray | None:
        if not isinstance(data, list) or not data:
            return None
        try:
            matrix = np.array(data)
        except ValueError:  # ragged rows
            return None
        if matrix.dtype.kind == "O" and all(
            value is None or type(value) in (int, float) for value in matrix.flat
        ):
            try:
                matrix = matrix.astype(float)  # nulls -> NaN, imputed as on MLflow's path
            except OverflowError:  # an integer beyond float64
                return None
        if matrix.dtype.kind not in "if" or matrix.shape != (len(data), len(columns)):
            return None  # strings or nesting
        if matrix.dtype.kind == "f" and (np.abs(matrix) > FLOAT32_MAX).any():
            return None  # MLflow's path names the column
        if columns != self.columns:
            matrix = matrix[:, [columns.index(column) for column in self.columns]]
        return np.ascontiguousarray(matrix, dtype=float)

    def check_no_booleans(self, frame: pd.DataFrame) -> None:
        """MLflow's parser passes JSON true/false on, and the model would read them as 1/0:
        a numeric feature refuses them, as on `/predict` (found by schemathesis)."""
        for column, kind in self.feature_types.items():
            if kind != "numeric" or column not in frame.columns:
                continue
            values = frame[column]
            if pd.api.types.is_bool_dtype(values.dtype) or (
                values.dtype == object and values.map(_is_bool).any()
            ):
                raise RequestError(column, "must be a number, got a boolean")

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records -> the raw frame `LoadedModel.prepare` coerces (mixed-type models)."""
        for row_index, record in enumerate(records):
            for column, kind in self.feature_types.items():
                self._check_value(row_index, column, kind, record[column])
        return pd.DataFrame.from_records(records, columns=self.columns)

    @staticmethod
    def _check_value(row_index: int, column: str, kind: FeatureType, value: Any) -> None:
        where = f"records[{row_index}].{column}"
        if value is None:
            return
        if isinstance(value, (dict, list)):
            raise RequestError(where, f"must be a single value, got {type(value).__name__}")
        if kind == "numeric" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RequestError(where, f"must be a number, got {value!r}")
        if kind == "numeric" and not -FLOAT32_MAX <= value <= FLOAT32_MAX:
            raise RequestError(where, out_of_range(value))


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_row_count(rows: int, max_rows: int) -> None:
    """The per-request row limit of `/invocations` (413 over it)."""
    if rows > max_rows:
        raise RequestError("body", f"{rows} rows is over the limit of {max_rows}", 413)


def check_frame(frame: pd.DataFrame, max_rows: int) -> None:
    """Limits for frames parsed by MLflow's protocol (`/invocations`)."""
    if frame.empty:
        raise RequestError("body", "no rows to score")
    check_row_count(len(frame), max_rows)
    for column in frame.columns[frame.dtypes == object]:
        nested = frame[column].map(lambda value: isinstance(value, (list, dict, tuple, np.ndarray)))
        if nested.any():
            raise RequestError(str(column), "must be a single value, got a nested one")
    numeric = frame.select_dtypes(include="number")
    outside = numeric.columns[(np.abs(numeric.to_numpy(dtype=float)) > FLOAT32_MAX).any(axis=0)]
    if len(outside):
        raise RequestError(str(outside[0]), out_of_range(None))


def out_of_range(value: Any) -> str:
    """What a number outside the schema's bound is told (float32: see FLOAT32_MAX)."""
    got = "" if value is None else f", got {value!r}"
    return f"must be a finite number within float32's range (+/-{FLOAT32_MAX:.7g}) or null{got}"


def data_error_field(error: DataError) -> str:
    """The column a `DataError` names (its first quoted name), for the `field` of a 4xx body."""
    match = re.search(r"'([^']+)'", str(error))
    return match.group(1) if match else "body"


# --- OpenAPI ------------------------------------------------------------------------------


def record_schema(feature_types: dict[str, FeatureType], example: dict[str, Any] | None) -> dict:
    """JSON schema of one record: every feature required, null allowed (it is imputed)."""
    properties = {
        column: {**_JSON_TYPES[kind], "type": [_JSON_TYPES[kind]["type"], "null"], "title": column}
        for column, kind in feature_types.items()
    }
    schema: dict[str, Any] = {
        "type": "object",
        "title": "Record",
        "properties": properties,
        "required": list(feature_types),
        "additionalProperties": False,
    }
    if example:
        schema["example"] = example
    return schema


def prediction_schema(classes: list[Any]) -> dict[str, Any]:
    """`/predict`'s answer: a label and the class probabilities per row; with no classes (a
    regressor), a value per row."""
    if not classes:
        row = {
            "type": "object",
            "required": ["prediction_id", "value"],
            "properties": {"prediction_id": {"type": "string"}, "value": {"type": "number"}},
        }
    else:
        row = {
            "type": "object",
            "required": ["prediction_id", "label", "probabilities"],
            "properties": {
                "prediction_id": {"type": "string"},
                "label": {**_label_type(classes), "enum": classes},
                "probabilities": {
                    "type": "object",
                    "properties": {str(label): {"type": "number"} for label in classes},
                },
            },
        }
    return {
        "type": "object",
        "title": "PredictResponse",
        "required": ["model_name", "model_version", "predictions"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": row},
        },
    }


def invocations_schema(
    feature_types: dict[str, FeatureType], example: dict[str, Any] | None
) -> dict[str, Any]:
    """MLflow's scoring protocol: exactly one of the four input keys."""
    record = {"$ref": "#/components/schemas/Record"}
    columns = list(feature_types)
    split_example = (
        {"dataframe_split": {"columns": columns, "data": [[example[c] for c in columns]]}}
        if example
        else None
    )
    width = {"minItems": len(columns), "maxItems": len(columns)}
    variants = [
        _one_key(
            "dataframe_split",
            {
                "type": "object",
                "required": ["columns", "data"],
                # MLflow's parser refuses any other key (found by schemathesis, seed 2026)
                "additionalProperties": False,
                "properties": {
                    "index": {"type": "array", "items": {"type": ["integer", "string"]}},
                    # every feature once, in any order; each row as wide
                    "columns": {
                        "type": "array",
                        "items": {"type": "string", "enum": columns},
                        "uniqueItems": True,
                        **width,
                    },
                    "data": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "array", "items": _split_value(feature_types), **width},
                    },
                },
            },
        ),
        _one_key("dataframe_records", {"type": "array", "minItems": 1, "items": record}),
        _one_key("instances", {"type": "array", "minItems": 1, "items": record}),
        _one_key("inputs", {"type": "array", "minItems": 1, "items": record}),
    ]
    schema: dict[str, Any] = {"title": "InvocationsRequest", "oneOf": variants}
    if split_example:
        schema["example"] = split_example
    return schema


# A CSV value of each feature type; empty is a missing value (imputed)
_CSV_VALUES: dict[FeatureType, str] = {
    "numeric": r"(-?[0-9]{1,15}(\.[0-9]{1,15})?)?",
    "boolean": "(true|false)?",
    "categorical": "[A-Za-z0-9_]*",
}


def csv_schema(feature_types: dict[str, FeatureType]) -> dict[str, Any]:
    """`text/csv` on `/invocations`: a header naming every feature, then at least one row.
    MLflow's parser takes more (quoting, exponents), but this is what the schema promises."""
    header = ",".join(_literal(_csv_field(column)) for column in feature_types)
    row = ",".join(_CSV_VALUES[kind] for kind in feature_types.values())
    return {
        "type": "string",
        "minLength": 1,
        "pattern": f"^{header}\\r?\\n({row}\\r?\\n)*{row}\\r?\\n?$",
    }


def _literal(text: str) -> str:
    """`text` as a regular expression that matches it, valid in ECMA-262 (OpenAPI's dialect:
    Python's re.escape also escapes spaces, which ECMA's unicode mode refuses)."""
    return "".join(f"\\{char}" if char in "\\^$.|?*+()[]{}/" else char for char in text)


def _csv_field(name: str) -> str:
    """A header field as CSV writes it: quoted when it holds a comma, quote or newline."""
    if any(char in name for char in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name


def _split_value(feature_types: dict[str, FeatureType]) -> dict[str, Any]:
    """A value in a `dataframe_split` row. Columns come in any order, so a per-column type
    only fits when every feature has the same one; else any single value."""
    kinds = set(feature_types.values())
    if len(kinds) == 1:
        (kind,) = kinds
        return {**_JSON_TYPES[kind], "type": [_JSON_TYPES[kind]["type"], "null"]}
    return {"type": ["number", "string", "boolean", "null"]}


def _one_key(key: str, value_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key],
        "properties": {key: value_schema, "params": {"type": "object"}},
        "additionalProperties": False,
    }


def _label_type(classes: list[Any]) -> dict[str, str]:
    if all(isinstance(label, bool) for label in classes):
        return {"type": "boolean"}
    if all(isinstance(label, int) for label in classes):
        return {"type": "integer"}
    if all(isinstance(label, (int, float)) for label in classes):
        return {"type": "number"}
    return {"type": "string"}


def example_record(example: pd.DataFrame | None) -> dict[str, Any] | None:
    """The model's logged input example, first row, as plain JSON values."""
    if example is None or example.empty:
        return None
    row = example.iloc[0]
    return {column: plain(row[column]) for column in example.columns}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "properties": {"detail": {"type": "string"}, "field": {"type": "string"}},
}
MLFLOW_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "MlflowError",
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry (`ServingOptions`), stated in the schema's 413s."""

    max_rows: int = 10_000
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def describe(self) -> str:
        return (
            f"over {self.max_rows} rows (max_request_rows), or a body over {self.max_bytes} "
            "bytes (max_request_bytes; refused while it streams in, before it is parsed)"
        )


def with_model_schemas(
    openapi: dict[str, Any], model: LoadedModel | None, limits: RequestLimits = RequestLimits()
) -> dict[str, Any]:
    """Fill the request/response schemas of the scoring routes from the served model."""
    feature_types = dict(model.feature_types) if model is not None else {}
    example = example_record(model.input_example) if model is not None else None
    classes = list(model.classes) if model is not None else []
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components["Record"] = record_schema(feature_types, example)
    components["PredictResponse"] = prediction_schema(classes)
    components["InvocationsRequest"] = invocations_schema(feature_types, example)
    components["Error"] = ERROR_SCHEMA
    components["MlflowError"] = MLFLOW_ERROR_SCHEMA
    paths = openapi.setdefault("paths", {})
    record = {"$ref": "#/components/schemas/Record"}
    _set_operation(
        paths,
        "/predict",
        request={
            "application/json": {
                "schema": {"oneOf": [record, {"type": "array", "minItems": 1, "items": record}]},
                **({"example": example} if example else {}),
            }
        },
        ok="#/components/schemas/PredictResponse",
        error="#/components/schemas/Error",
        limits=limits,
    )
    _set_operation(
        paths,
        "/invocations",
        request={
            "application/json": {"schema": {"$ref": "#/components/schemas/InvocationsRequest"}},
            "text/csv": {"schema": csv_schema(feature_types)},
        },
        ok=None,
        error="#/components/schemas/MlflowError",
        limits=limits,
    )
    if model is not None:
        openapi["info"]["description"] += (
            f"\n\nServing `{model.uri}` (run `{model.run_id}`); features: "
            f"{len(feature_types)}; classes: {classes}."
        )
    return openapi


def _set_operation(
    paths: dict[str, Any],
    path: str,
    request: dict[str, Any],
    ok: str | None,
    error: str,
    limits: RequestLimits,
) -> None:
    operation = paths.get(path, {}).get("post")
    if operation is None:
        return
    operation["requestBody"] = {
        "required": True,
        "description": f"At most {limits.max_rows} rows and {limits.max_bytes} bytes.",
        "content": request,
    }
    ok_schema: dict[str, Any] = (
        {"$ref": ok}
        if ok
        else {
            "type": "object",
            "required": ["predictions"],
            "properties": {"predictions": {"type": "array"}},
        }
    )
    error_body = {"content": {"application/json": {"schema": {"$ref": error}}}}
    operation["responses"] = {
        "200": {
            "description": "Predictions",
            "content": {"application/json": {"schema": ok_schema}},
        },
        "400": {"description": "Malformed body, or JSON nested too deeply", **error_body},
        "413": {"description": f"Too large: {limits.describe()}", **error_body},
        "415": {"description": "Wrong content type", **error_body},
        "422": {"description": "A feature value or name is wrong", **error_body},
        "503": {"description": "No model loaded yet", **error_body},
    }
