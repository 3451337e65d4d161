"""The served model: a loaded registry version plus what serving derives from it once, at load
time (the record validator, the labels as an array, the numeric fast path)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from ml.data import DataError
from ml.decision import decide
from ml.predict import (
    LoadedModel,
    NumericTransform,
    estimator_proba,
    numeric_transform,
    pipeline_proba,
)
from serving.schemas import RecordValidator, RequestError

# Model input: a float matrix in feature order (the fast path) or a frame the model coerces.
Rows: TypeAlias = np.ndarray | pd.DataFrame


@dataclass
class ServedModel:
    """A loaded model and what serving derives from it once, at load time."""

    loaded: LoadedModel
    validator: RecordValidator
    classes: list[Any]
    label_array: np.ndarray = field(init=False)
    column_index: pd.Index = field(init=False)
    numeric: NumericTransform | None = field(init=False)
    regressor: bool = field(init=False)  # answers values: no classes, no probabilities

    def __post_init__(self) -> None:
        self.regressor = self.loaded.is_regressor
        self.label_array = np.asarray(self.classes, dtype=object)
        # Object dtype, not pandas 3's default Arrow strings: the preprocessing's column
        # lookups on every batch are about a fifth cheaper.
        self.column_index = pd.Index(self.validator.columns, dtype=object)
        # Float matrices skip the ColumnTransformer when the same arithmetic reproduces it.
        self.numeric = (
            numeric_transform(self.loaded.model, self.validator.columns)
            if self.validator.all_numeric
            else None
        )

    @classmethod
    def of(cls, loaded: LoadedModel) -> ServedModel:
        """Derive once, at load time, what every request would otherwise redo."""
        return cls(loaded, RecordValidator(dict(loaded.feature_types)), list(loaded.classes))

    def predict_proba(self, rows: Rows) -> np.ndarray:
        """Float matrices are already typed: through the numeric transform when the model
        has one, else its pipeline. Frames go through the model's own coercion. A regressor's
        answer is its values, as one column (`Scored.values`)."""
        if self.regressor:
            return self.predict_values(rows)[:, np.newaxis]
        if not isinstance(rows, np.ndarray):
            return self.loaded.predict_proba(rows)
        if self.numeric is not None:
            return estimator_proba(self.loaded.model[-1], self.numeric(rows))
        return pipeline_proba(self.loaded.model, pd.DataFrame(rows, columns=self.column_index))

    def predict_values(self, rows: Rows) -> np.ndarray:
        """A regressor's values: its pipeline's `predict` (matrices past the numeric transform
        when it reproduces the preprocessing, as for classifiers)."""
        model = self.loaded.model
        if not isinstance(rows, np.ndarray):
            return self.loaded.predict_values(rows)
        if self.numeric is not None:
            return np.asarray(model[-1].predict(self.numeric(rows)), dtype=float)
        frame = pd.DataFrame(rows, columns=self.column_index)
        return np.asarray(model.predict(frame), dtype=float)

    def score(self, rows: Rows) -> np.ndarray:
        """`predict_proba`, with values the model cannot take (e.g. overflowing after scaling)
        reported as the client's error rather than a 500."""
        try:
            return self.predict_proba(rows)
        except ValueError as exc:
            message = str(exc).splitlines()[0]
            raise RequestError("body", f"the model cannot score these values: {message}") from exc

    def score_alone(self, rows: Rows) -> Scored | RequestError:
        """`score`, with the client's error returned: one bad request of a batch."""
        try:
            return Scored(self, self.score(rows))
        except RequestError as exc:
            return exc

    def score_records(self, records: list[dict[str, Any]]) -> Scored:
        """Validate and score in one call (large requests run it in a worker thread)."""
        return Scored(self, self.score(self.input_rows(records)))

    def input_rows(self, records: list[dict[str, Any]]) -> Rows:
        """Validated records in the cheapest form the model can take."""
        if self.validator.all_numeric:
            return self.validator.numeric_rows(records)
        return self.loaded.prepare(self.validator.frame(records))

    def frame_rows(self, frame: pd.DataFrame) -> Rows:
        """A frame parsed by MLflow's protocol in the cheapest form the model can take: a float
        matrix when every feature is numeric and arrived as numbers (no per-column coercion),
        else the model's own coercion, which names a bad column."""
        columns = self.validator.columns
        if self.validator.all_numeric and set(frame.columns) == set(columns):
            frame = frame[columns]
            dtypes = frame.dtypes
            if all(
                pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                for t in dtypes
            ):
                return frame.to_numpy(dtype=float)
        try:
            return self.loaded.prepare(frame)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise RequestError("body", f"cannot read the rows: {exc}", 400) from exc

    def as_frame(self, rows: Rows) -> pd.DataFrame:
        """Rows as a frame, so matrices and frames can be merged into one batch."""
        if isinstance(rows, np.ndarray):
            return pd.DataFrame(rows, columns=self.validator.columns)
        return rows


@dataclass
class Scored:
    """Probabilities for some rows and the model that computed them (a swap may follow)."""

    model: ServedModel
    proba: np.ndarray

    @property
    def labels(self) -> list[Any]:
        """Each row's decision: the positive class when its probability reaches the model's
        threshold (binary models logged with one), else the most probable class; a
        regressor's value."""
        if self.model.regressor:
            return self.values
        return list(decide(self.proba, self.model.label_array, self.model.loaded.threshold))

    @property
    def values(self) -> list[float]:
        """A regressor's predicted values (its one answer column)."""
        return [float(value) for value in self.proba[:, 0]]
