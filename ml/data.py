"""Load a tabular dataset, validate it, fingerprint it and split it.

Every failure a user can cause raises `DataError` with one sentence naming the file or the
column at fault; the CLI turns it into exit code 2 before anything is registered.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from ml.common.tasks import CLASSIFICATION, REGRESSION, TaskChoice
from ml.common.values import short_repr, some

FeatureType = Literal["numeric", "categorical", "boolean"]
DEMO_SOURCE = "demo"
DEMO_TARGET = "target"
SQL_SCHEMES = ("sqlite:", "postgresql", "postgres:", "mysql")
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
# A numeric target with more distinct values than this, some classes too small to split,
# is most likely a quantity (a price, a strength), not labels.
CONTINUOUS_MIN_DISTINCT = 20


class DataError(ValueError):
    """A problem with the user's data: the message names the file or column at fault."""


class ValidationReport(BaseModel):
    """What validation found; logged as `validation_report.json` with every training run."""

    source: str
    rows: int
    columns: int
    target: str
    # classification or regression, and why (inferred from the target, or the setting)
    task: str = CLASSIFICATION
    task_reason: str = ""
    classes: dict[str, int]  # classification: rows per class; regression: empty
    # regression: the target's min, max, mean, median and distinct values; else empty
    target_summary: dict[str, float] = {}
    feature_types: dict[str, FeatureType]
    dropped_columns: dict[str, str]
    null_counts: dict[str, int]
    duplicate_rows: int
    min_rows_per_class: int
    fingerprint: str


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: raw features, the target and what we learned about them."""

    frame: pd.DataFrame
    target: str
    report: ValidationReport
    # The feature columns as loaded, before coercion, on `frame`'s index: the registered
    # model's signature describes these (what a user sends), not the coerced dtypes.
    raw_features: pd.DataFrame | None = None

    @property
    def task(self) -> str:
        """classification or regression."""
        return self.report.task

    @property
    def feature_types(self) -> dict[str, FeatureType]:
        """Feature column -> numeric / categorical / boolean, in training order."""
        return self.report.feature_types

    @property
    def X(self) -> pd.DataFrame:
        """The feature columns (raw, coerced to their inferred types)."""
        return self.frame[list(self.feature_types)]

    @property
    def y(self) -> pd.Series:
        """The target column."""
        return self.frame[self.target]


@dataclass(frozen=True)
class Split:
    """A train/holdout split (stratified for classification); the holdout is what the
    promotion gate scores on."""

    X_train: pd.DataFrame  # pylint: disable=invalid-name
    X_holdout: pd.DataFrame  # pylint: disable=invalid-name
    y_train: pd.Series
    y_holdout: pd.Series


# --- loading ------------------------------------------------------------------------------


def load_frame(source: str, table: str | None = None) -> pd.DataFrame:
    """Read the raw table from a CSV/Parquet file, a SQL table, or the bundled demo."""
    if source == DEMO_SOURCE:
        return _load_demo()
    if source.startswith(SQL_SCHEMES):
        return _load_sql(source, table)
    return _load_file(Path(source))


def _load_demo() -> pd.DataFrame:
    """scikit-learn's breast cancer set: ships with scikit-learn, so no download."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    # String labels exercise the label mapping end to end, as real data would.
    names = dict(enumerate(bunch.target_names))
    frame[DEMO_TARGET] = frame[DEMO_TARGET].map(names)
    return frame


def _load_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            frame = _read_csv(path)
    except pd.errors.ParserWarning as exc:
        raise DataError(
            f"{path}: its rows have more fields than the header ({_first_line(exc)})"
        ) from exc
    except (OSError, ValueError) as exc:  # pandas' ParserError, EmptyDataError, bad encodings
        raise DataError(f"{path}: cannot be read as {_kind(suffix)}: {_first_line(exc)}") from exc
    if frame.empty:
        raise DataError(f"{path}: has a header but no rows")
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """Any delimiter; rows longer than the header are an error, not data to guess at.

    By default pandas takes a row's extra leading field as an index, which shifts every value
    onto the next column's name; with `index_col=False` it drops the extra field and warns.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(path, sep=None, engine="python", index_col=False)


def _load_sql(url: str, table: str | None) -> pd.DataFrame:
    import sqlalchemy as sa  # only SQL sources pay for the import

    if not table:
        raise DataError(
            f"{_safe_url(url)}: a SQL source needs a table (--table / MLOPS_DATA_TABLE)"
        )
    try:
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            frame = pd.read_sql_table(table, connection)
    except ValueError as exc:  # pandas: table not found
        raise DataError(f"{_safe_url(url)}: no table named {table!r}") from exc
    except sa.exc.SQLAlchemyError as exc:
        raise DataError(
            f"{_safe_url(url)}: cannot read table {table!r}: {_first_line(exc)}"
        ) from exc
    if frame.empty:
        raise DataError(f"{_safe_url(url)}: table {table!r} has no rows")
    return frame


# --- validation ---------------------------------------------------------------------------


def load_dataset(
    source: str,
    target: str | None,
    *,
    table: str | None = None,
    cv_folds: int = 3,
    test_size: float = 0.2,
    task: TaskChoice = "auto",
    max_classes: int = 20,
) -> Dataset:
    """Load and validate: the single entry point the pipeline and the CLI use."""
    frame = load_frame(source, table)
    target = target or (DEMO_TARGET if source == DEMO_SOURCE else None)
    return validate(
        frame,
        target,
        source=_safe_url(source),
        cv_folds=cv_folds,
        test_size=test_size,
        task=task,
        max_classes=max_classes,
    )


def validate(
    frame: pd.DataFrame,
    target: str | None,
    *,
    source: str,
    cv_folds: int = 3,
    test_size: float = 0.2,
    task: TaskChoice = "auto",
    max_classes: int = 20,
) -> Dataset:  # pylint: disable=too-many-locals
    """Check the frame can train a model; infer the task and the feature types; count what
    is odd."""
    if target is None:
        raise DataError(f"{source}: name the target column (--target / MLOPS_TARGET)")
    if target not in frame.columns:
        raise DataError(
            f"{source}: target column {target!r} not found; {_columns_hint(frame, target)}"
        )
    frame = frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    where = f"{source}: target column {target!r}"
    _check_numeric_target(frame[target], where)
    frame = frame[frame[target].notna()].reset_index(drop=True)
    labels = frame[target]
    _check_not_constant(labels, where)
    chosen, reason = infer_task(labels, max_classes, task)
    needed = min_rows_per_class(cv_folds, test_size)
    if chosen == REGRESSION:
        frame[target] = _regression_target(labels, where, needed)
        classes = pd.Series(dtype=int)
    else:
        frame[target] = normalise_target(labels)
        classes = frame[target].value_counts()
        _check_classes(classes, labels, where, needed, cv_folds)

    features = [column for column in frame.columns if column != target]
    all_null = [column for column in features if frame[column].isna().all()]
    if all_null:
        raise DataError(f"{source}: {_columns(all_null)} entirely empty; drop them or fill them")

    feature_types, dropped = infer_feature_types(frame[features])
    if not feature_types:
        raise DataError(f"{source}: no usable feature columns besides the target {target!r}")
    raw_features = frame[list(feature_types)]
    frame = coerce_features(frame, feature_types)

    report = ValidationReport(
        source=source,
        rows=len(frame),
        columns=len(frame.columns),
        target=target,
        task=chosen,
        task_reason=reason,
        classes={str(label): int(count) for label, count in classes.items()},
        target_summary=_summary(frame[target]) if chosen == REGRESSION else {},
        feature_types=feature_types,
        dropped_columns=dropped,
        null_counts={c: int(n) for c, n in frame.isna().sum().items() if n},
        duplicate_rows=int(frame.duplicated().sum()),
        min_rows_per_class=needed,
        fingerprint=fingerprint(frame[[*feature_types, target]]),
    )
    return Dataset(
        frame=frame[[*feature_types, target]],
        target=target,
        report=report,
        raw_features=raw_features,
    )


def _columns_hint(frame: pd.DataFrame, target: str) -> str:
    """A few of the columns, and the closest names to a mistyped one."""
    names = [str(column) for column in frame.columns]
    hint = f"columns are {some(names, limit=6)}"
    close = difflib.get_close_matches(target, names, n=3)
    return f"{hint}; closest: {some(close)}" if close else hint


def _columns(names: list[str]) -> str:
    if len(names) == 1:
        return f"column {names[0]!r} is"
    return f"{len(names)} columns ({some(names)}) are"


def _is_number_column(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _check_numeric_target(values: pd.Series, where: str) -> None:
    """A numeric target needs a finite value on every row: a NaN or an infinity is a broken
    measurement, not an unlabelled row to drop quietly (a text target's empty cells are)."""
    if not _is_number_column(values):
        return
    as_float = values.astype(float)
    for problem, bad in (("missing (NaN)", as_float.isna()), ("infinite", np.isinf(as_float))):
        if bad.any():
            rows = [int(position) + 1 for position in np.flatnonzero(bad.to_numpy())]
            many = len(rows) > 1
            raise DataError(
                f"{where}: {len(rows)} of {len(values)} values {'are' if many else 'is'} "
                f"{problem} (data row{'s' if many else ''} {some(rows, show=str)}); a numeric "
                "target needs a finite value on every row: fill or drop those rows"
            )


def _check_not_constant(labels: pd.Series, where: str) -> None:
    """One value on every row is nothing to learn, whatever the task."""
    if labels.nunique() == 1:
        raise DataError(
            f"{where} is constant: all {len(labels)} rows are {short_repr(labels.iloc[0])}; "
            "a classifier needs at least two classes, a regressor at least two distinct values"
        )


def _check_classes(
    classes: pd.Series, labels: pd.Series, where: str, needed: int, cv_folds: int
) -> None:
    """At least two classes, each big enough for a holdout row and every CV fold; the message
    counts the classes and shows a few, never the whole column."""
    if classes.empty:
        raise DataError(f"{where} has no values: it needs at least two classes")
    if len(classes) == 1:
        raise DataError(
            f"{where} is constant: all {int(classes.iloc[0])} rows are "
            f"{short_repr(classes.index[0])}; a classifier needs at least two classes"
        )
    small = classes[classes < needed]
    if small.empty:
        return
    examples = some(list(small.items()), show=lambda item: f"{short_repr(item[0])} ({item[1]})")
    counted = (
        f"class {examples} has fewer than {needed} rows"
        if len(small) == 1
        else f"{len(small)} classes have fewer than {needed} rows, e.g. {examples}"
    )
    if _looks_continuous(labels):
        raise DataError(
            f"{where} looks continuous ({labels.nunique()} distinct numeric values in "
            f"{len(labels)} rows) but the task is classification: {counted}; "
            "use --task regression (MLOPS_TASK)"
        )
    raise DataError(f"{where}: {counted}, too few to split into a holdout and {cv_folds} CV folds")


def _looks_continuous(labels: pd.Series) -> bool:
    """Numbers with fractions, or more distinct numbers than labels usually have."""
    if not _is_number_column(labels):
        return False
    as_float = labels.astype(float)
    fractional = bool((as_float != as_float.round()).any())
    return fractional or labels.nunique() > CONTINUOUS_MIN_DISTINCT


def infer_task(labels: pd.Series, max_classes: int, task: TaskChoice = "auto") -> tuple[str, str]:
    """(classification or regression, why): text and boolean targets are classes, and so are
    whole numbers with at most `max_classes` distinct values; other numbers are a quantity.
    A `task` other than auto is the user's choice, said as such."""
    if task != "auto":
        return task, "set by --task / MLOPS_TASK"
    if not _is_number_column(labels) or _as_boolean(labels) is not None:
        kind = "boolean" if _as_boolean(labels) is not None else "text"
        return CLASSIFICATION, f"{kind} target"
    distinct = int(labels.nunique())
    as_float = labels.astype(float)
    if bool((as_float != as_float.round()).any()):
        return REGRESSION, f"numeric target with fractions ({distinct} distinct values)"
    if distinct <= max_classes:
        return CLASSIFICATION, (
            f"whole-number target with {distinct} distinct values "
            f"(at most MLOPS_MAX_CLASSES={max_classes})"
        )
    return REGRESSION, (
        f"whole-number target with {distinct} distinct values "
        f"(more than MLOPS_MAX_CLASSES={max_classes})"
    )


def _regression_target(labels: pd.Series, where: str, needed: int) -> pd.Series:
    """The target as floats; DataError when it is not numeric, is constant, or has too few
    rows for a holdout and the CV folds. Messages show a few values, never the column."""
    values = pd.to_numeric(labels, errors="coerce")
    text = labels[values.isna()]
    if not text.empty:
        raise DataError(
            f"{where}: regression needs numbers, but {len(text)} of {len(labels)} values are "
            f"not, e.g. {some(list(text.unique()))}"
        )
    values = values.astype(float)
    if len(values) < 2 * needed:
        raise DataError(
            f"{where}: {len(values)} rows, too few for a holdout and the CV folds "
            f"(at least {2 * needed})"
        )
    return values


def _summary(values: pd.Series) -> dict[str, float]:
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(values.median()),
        "distinct": float(values.nunique()),
    }


def min_rows_per_class(cv_folds: int, test_size: float) -> int:
    """Fewest rows a class needs for one holdout row and `cv_folds` rows in training."""
    return max(math.ceil(1 / test_size), math.ceil(cv_folds / (1 - test_size)) + 1)


def normalise_target(target: pd.Series) -> pd.Series:
    """Booleans and TRUE/FALSE strings become bools; other labels keep their own type
    (`mlops evaluate` reads a labelled file's target the way training did).

    Classifiers encode labels internally and keep them in `classes_`, so the label mapping
    travels inside the model and predictions come back as the original labels.
    """
    as_bool = _as_boolean(target)
    if as_bool is not None:
        return as_bool.astype(bool)
    if target.dtype.kind in "iu":
        return target
    if target.dtype.kind == "f" and (target == target.round()).all():
        return target.astype("int64")
    return target.astype(str)


def infer_feature_types(
    features: pd.DataFrame,
) -> tuple[dict[str, FeatureType], dict[str, str]]:
    """Map each column to numeric/categorical/boolean; drop identifier-like text columns."""
    types: dict[str, FeatureType] = {}
    dropped: dict[str, str] = {}
    for column in features.columns:
        values = features[column]
        if _as_boolean(values) is not None:
            types[column] = "boolean"
        elif pd.api.types.is_numeric_dtype(values):
            types[column] = "numeric"
        elif _is_identifier(values):
            dropped[column] = "identifier-like: a distinct text value on every row"
        else:
            types[column] = "categorical"
    return types, dropped


def _is_identifier(values: pd.Series) -> bool:
    non_null = values.dropna()
    return len(non_null) > 50 and non_null.nunique() == len(non_null)


def _as_boolean(values: pd.Series) -> pd.Series | None:
    """The column as 1.0/0.0/NaN if every non-null value reads as a boolean, else None."""
    if values.dtype == bool:
        return values.astype(float)
    non_null = values.dropna()
    if non_null.empty:
        return None
    if pd.api.types.is_numeric_dtype(values):
        return None  # 0/1 integers stay numeric: an ordinary, well-scaled feature
    words = non_null.astype(str).str.strip().str.lower()
    if not words.isin(TRUE_WORDS | FALSE_WORDS).all():
        return None
    mapped = (
        values.astype(str)
        .str.strip()
        .str.lower()
        .map(lambda word: 1.0 if word in TRUE_WORDS else 0.0 if word in FALSE_WORDS else np.nan)
    )
    return mapped.where(values.notna(), np.nan).astype(float)


def _boolean_feature(column: str, values: pd.Series) -> pd.Series:
    """A known boolean feature as 1.0/0.0/NaN: true/false words, booleans, or the 0/1 numbers
    an earlier coercion made (serving coerces request rows, then the model's `prepare` does
    again: coercion must take its own output)."""
    as_bool = _as_boolean(values)
    if as_bool is not None:
        return as_bool
    present = values.dropna()
    if present.empty:
        return pd.Series(np.nan, index=values.index, dtype=float)
    if pd.api.types.is_numeric_dtype(values):
        valid = present.isin([0, 1])
        if valid.all():
            return values.astype(float)
    else:
        valid = present.astype(str).str.strip().str.lower().isin(TRUE_WORDS | FALSE_WORDS)
    bad = present[~valid].iloc[0]
    bad = bad.item() if isinstance(bad, np.generic) else bad
    raise DataError(f"column {column!r} must be true/false, got {bad!r}")


def coerce_features(frame: pd.DataFrame, feature_types: dict[str, FeatureType]) -> pd.DataFrame:
    """Give each feature the dtype training saw; serving calls this on request rows too.

    Raises `DataError` naming the column when a value cannot take its type.
    """
    coerced = frame.copy()
    for column, kind in feature_types.items():
        if column not in coerced.columns:
            raise DataError(f"missing feature column {column!r}")
        values = coerced[column]
        if kind == "numeric":
            converted = pd.to_numeric(values, errors="coerce")
            bad = converted.isna() & values.notna()
            if bad.any():
                raise DataError(f"column {column!r} must be numeric, got {values[bad].iloc[0]!r}")
            coerced[column] = converted.astype(float)
        elif kind == "boolean":
            coerced[column] = _boolean_feature(column, values)
        else:
            # NaN (not None) marks missing text: SimpleImputer and OneHotEncoder expect it.
            coerced[column] = values.map(lambda value: np.nan if pd.isna(value) else str(value))
            coerced[column] = coerced[column].astype(object)
    return coerced


# --- fingerprint and split ---------------------------------------------------------------


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the canonical data: independent of row and column order."""
    canonical = frame[sorted(frame.columns)]
    row_hashes = np.sort(pd.util.hash_pandas_object(canonical, index=False).to_numpy())
    digest = hashlib.sha256()
    digest.update(json.dumps([(c, str(canonical[c].dtype)) for c in canonical.columns]).encode())
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()


def split(dataset: Dataset, test_size: float, seed: int) -> Split:
    """A split with a fixed seed, so the gate always scores the same holdout; stratified by
    class for classification."""
    stratify = dataset.y if dataset.task == CLASSIFICATION else None
    X_train, X_holdout, y_train, y_holdout = train_test_split(  # pylint: disable=invalid-name
        dataset.X, dataset.y, test_size=test_size, random_state=seed, stratify=stratify
    )
    return Split(X_train, X_holdout, y_train, y_holdout)


# --- small helpers -------------------------------------------------------------------------


def _kind(suffix: str) -> str:
    return "Parquet" if suffix in {".parquet", ".pq"} else "CSV"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _safe_url(source: str) -> str:
    """A source string fit for logs: SQL URL passwords masked."""
    if source.startswith(SQL_SCHEMES) and "@" in source:
        from sqlalchemy.engine import make_url

        return make_url(source).render_as_string(hide_password=True)
    return source


def describe(report: ValidationReport) -> dict[str, Any]:
    """A short, JSON-ready summary of a report for tags and tables."""
    return {
        "rows": report.rows,
        "features": len(report.feature_types),
        "task": report.task,
        "classes": report.classes,
        "duplicates": report.duplicate_rows,
        "fingerprint": report.fingerprint[:12],
    }
