"""ml.data: loading, validation errors that name the culprit, types, fingerprint, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from ml.data import (
    DataError,
    coerce_features,
    fingerprint,
    load_dataset,
    min_rows_per_class,
    split,
    validate,
)


def mixed_frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """Numeric, categorical and boolean columns with gaps and a TRUE/FALSE string target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows).astype(float),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "member": rng.choice(["TRUE", "FALSE"], rows),
            "spend": rng.normal(50, 10, rows),
            "churned": rng.choice(["TRUE", "FALSE"], rows),
        }
    )
    frame.loc[::9, "age"] = np.nan
    frame.loc[::11, "plan"] = None
    return frame


def test_demo_loads_with_string_labels() -> None:
    dataset = load_dataset("demo", None)
    assert dataset.target == "target"
    assert set(dataset.report.classes) == {"benign", "malignant"}
    assert set(dataset.feature_types.values()) == {"numeric"}
    assert len(dataset.report.fingerprint) == 64


def test_mixed_csv_types_and_boolean_target(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    mixed_frame().to_csv(path, index=False)
    dataset = load_dataset(str(path), "churned")
    assert dataset.feature_types == {
        "age": "numeric",
        "plan": "categorical",
        "member": "boolean",
        "spend": "numeric",
    }
    assert dataset.y.dtype == bool
    assert dataset.report.null_counts["age"] > 0
    assert set(dataset.X["member"].dropna()) == {0.0, 1.0}


def test_parquet_and_sql_sources_load_the_same_data(tmp_path: Path) -> None:
    frame = mixed_frame()
    frame.to_parquet(tmp_path / "d.parquet")
    url = f"sqlite:///{tmp_path / 'd.db'}"
    frame.to_sql("customers", sa.create_engine(url), index=False)
    from_parquet = load_dataset(str(tmp_path / "d.parquet"), "churned")
    from_sql = load_dataset(url, "churned", table="customers")
    assert from_parquet.report.fingerprint == from_sql.report.fingerprint


@pytest.mark.parametrize(
    ("write", "target", "message"),
    [
        (None, "y", "no such file"),
        ("", "y", "the file is empty"),
        ("a,b\n", "b", "header but no rows"),
        ("\x00\xff\xfe garbage \x00", "y", "cannot be read"),
        # Every row one field longer than the header: pandas would take the first field as
        # an index and shift each value onto the next column's name.
        ("a,b,y\n" + "1,2,x,9\n3,4,z,9\n" * 10, "y", "more fields than the header"),
        ("a,b,y\n1,2,x\n3,4,z,9\n" + "5,6,x\n" * 10, "y", "cannot be read"),
        ("a,b\n1,x\n2,y\n", "missing", "target column 'missing' not found"),
        ("a,b\n" + "1,x\n" * 30, "b", "at least two classes"),
        ("a,b\n" + "1,x\n" * 30 + "2,y\n", "b", "fewer than"),
        ("a,b,c\n" + "1,,x\n2,,y\n" * 20, "c", "entirely empty"),
    ],
)
def test_bad_input_names_the_file_or_column(
    tmp_path: Path, write: str | None, target: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    if write is not None:
        path.write_bytes(write.encode("latin-1"))
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(path), target)
    assert str(path) in str(error.value)


def test_sql_source_needs_a_table_and_names_a_missing_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).connect().close()
    with pytest.raises(DataError, match="needs a table"):
        load_dataset(url, "y")
    with pytest.raises(DataError, match="no table named 'nope'"):
        load_dataset(url, "y", table="nope")


def test_identifier_columns_are_dropped_and_reported() -> None:
    frame = mixed_frame()
    frame["customer_id"] = [f"c-{i:05d}" for i in range(len(frame))]
    dataset = validate(frame, "churned", source="frame")
    assert "customer_id" in dataset.report.dropped_columns
    assert "customer_id" not in dataset.X.columns


def test_fingerprint_ignores_row_and_column_order_but_not_values() -> None:
    frame = mixed_frame()
    shuffled = frame.sample(frac=1, random_state=1)[list(reversed(frame.columns))]
    assert fingerprint(frame) == fingerprint(shuffled)
    changed = frame.copy()
    changed.loc[0, "spend"] += 1
    assert fingerprint(frame) != fingerprint(changed)


def test_split_is_stratified_and_repeatable() -> None:
    dataset = load_dataset("demo", None)
    first, second = split(dataset, 0.2, 7), split(dataset, 0.2, 7)
    assert first.X_holdout.index.equals(second.X_holdout.index)
    share = dataset.y.value_counts(normalize=True)
    holdout_share = first.y_holdout.value_counts(normalize=True)
    assert (share - holdout_share).abs().max() < 0.02


def test_min_rows_per_class_allows_holdout_and_folds() -> None:
    assert min_rows_per_class(3, 0.2) == 5
    assert min_rows_per_class(5, 0.2) == 8


def test_coerce_features_names_the_bad_column() -> None:
    types = {"age": "numeric", "member": "boolean", "plan": "categorical"}
    good = coerce_features(pd.DataFrame({"age": ["3"], "member": [True], "plan": [1]}), types)
    assert good.loc[0, "age"] == 3.0 and good.loc[0, "member"] == 1.0 and good.loc[0, "plan"] == "1"
    with pytest.raises(DataError, match="column 'age' must be numeric"):
        coerce_features(pd.DataFrame({"age": ["old"], "member": [True], "plan": ["a"]}), types)
    with pytest.raises(DataError, match="column 'member' must be true/false"):
        coerce_features(pd.DataFrame({"age": [1], "member": ["maybe"], "plan": ["a"]}), types)


def test_coercion_takes_its_own_output() -> None:
    """Serving coerces request rows, then the model's prepare coerces them again: a boolean
    feature's 1.0/0.0 must read as the same booleans, and other numbers stay refused."""
    types = {"plan": "boolean", "x": "numeric", "state": "categorical"}
    raw = pd.DataFrame(
        {"plan": ["yes", "no", None], "x": ["1", "2.5", None], "state": ["a", None, "b"]}
    )
    once = coerce_features(raw, types)
    twice = coerce_features(once, types)
    pd.testing.assert_frame_equal(once, twice)
    assert once["plan"].tolist()[:2] == [1.0, 0.0]
    with pytest.raises(DataError, match="'plan' must be true/false, got 2"):
        coerce_features(pd.DataFrame({"plan": [1, 2], "x": [1, 2], "state": ["a", "b"]}), types)


SHORT = 400  # characters: an error is one readable line, whatever the column holds


def _with_target(values) -> pd.DataFrame:
    frame = mixed_frame(len(values)).drop(columns="churned")
    return frame.assign(strength=values)


def _error(frame: pd.DataFrame, target: str = "strength", task: str = "auto") -> str:
    with pytest.raises(DataError) as error:
        validate(frame, target, source="concrete.csv", task=task)  # type: ignore[arg-type]
    message = str(error.value)
    assert len(message) < SHORT and f"column {target!r}" in message and "\n" not in message
    return message


def test_a_continuous_target_is_named_as_such_with_a_few_of_its_values() -> None:
    """1,030 rows and about 800 distinct strengths once listed every one of them; forced to
    classification, the message counts them, shows three and names the way out."""
    rng = np.random.default_rng(1)
    strengths = _with_target(np.round(rng.uniform(2, 80, 1030), 2))
    message = _error(strengths, task="classification")
    distinct = message.split("(")[1].split(" distinct")[0]
    assert f"looks continuous ({distinct} distinct numeric values in 1030 rows)" in message
    assert "use --task regression (MLOPS_TASK)" in message
    assert f"{distinct} classes have fewer than 5 rows, e.g. " in message
    assert f"and {int(distinct) - 3} more" in message


def test_many_distinct_integers_look_continuous_too() -> None:
    message = _error(_with_target(np.arange(300) * 7), task="classification")
    assert "looks continuous (300 distinct numeric values in 300 rows)" in message


def test_a_few_small_classes_are_counted_and_shown_not_called_continuous() -> None:
    labels = ["a"] * 200 + ["b", "c", "d", "e", "f", "g", "h", "i"]
    message = _error(_with_target(labels))
    assert "8 classes have fewer than 5 rows, e.g. 'b' (1), 'c' (1), 'd' (1) and 5 more" in message
    assert "continuous" not in message
    one = _error(_with_target(["a"] * 200 + ["b", "b"]))
    assert "class 'b' (2) has fewer than 5 rows" in one


@pytest.mark.parametrize("value", [1.5, "yes", True])
def test_a_constant_target_says_so(value) -> None:
    message = _error(_with_target([value] * 60))
    assert "is constant: all 60 rows are" in message and "at least two classes" in message
    assert "a regressor at least two distinct values" in message


@pytest.mark.parametrize(
    ("bad", "problem"), [(np.nan, "missing (NaN)"), (np.inf, "infinite"), (-np.inf, "infinite")]
)
def test_a_numeric_target_must_be_finite_on_every_row(bad, problem) -> None:
    values = np.tile([0.0, 1.0], 300)
    values[[4, 40, 400, 401, 599]] = bad
    message = _error(_with_target(values))
    assert f"5 of 600 values are {problem} (data rows 5, 41, 401 and 2 more)" in message
    one = values.copy()
    one[[40, 400, 401, 599]] = 1.0
    assert f"1 of 600 values is {problem} (data row 5)" in _error(_with_target(one))


def test_a_text_target_still_drops_its_unlabelled_rows() -> None:
    frame = mixed_frame()
    frame.loc[:9, "churned"] = None
    assert validate(frame, "churned", source="frame").report.rows == len(frame) - 10


def test_a_missing_target_shows_a_few_columns_and_the_closest_name() -> None:
    frame = pd.DataFrame({f"feature_{i}": [1, 2] for i in range(200)}).assign(Churn=[0, 1])
    message = _error(frame, "churn")
    assert "columns are 'feature_0', 'feature_1'" in message and "and 195 more" in message
    assert "closest: 'Churn'" in message


def test_many_empty_columns_are_counted() -> None:
    empty = pd.DataFrame(np.nan, index=range(240), columns=[f"empty_{i}" for i in range(100)])
    frame = pd.concat([mixed_frame(), empty], axis=1)
    with pytest.raises(DataError) as error:
        validate(frame, "churned", source="frame")
    assert "100 columns ('empty_0', 'empty_1', 'empty_2' and 97 more) are entirely empty" in str(
        error.value
    )
    assert len(str(error.value)) < SHORT


# --- the task: inferred from the target, or set -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "task", "why"),
    [
        (["cat", "dog", "eel"] * 80, "classification", "text target"),
        ([True, False] * 120, "classification", "boolean target"),
        (["yes", "no"] * 120, "classification", "boolean target"),
        (np.tile(np.arange(5), 48), "classification", "whole-number target with 5 distinct"),
        (np.arange(240) * 3, "regression", "240 distinct values (more than MLOPS_MAX_CLASSES=20)"),
        (np.linspace(0.5, 99.5, 240), "regression", "numeric target with fractions"),
        # whole numbers read as floats (a CSV column with a gap elsewhere) count as integers
        (np.tile(np.arange(3), 80).astype(float), "classification", "3 distinct values"),
    ],
)
def test_the_task_is_inferred_from_the_target_and_says_why(values, task, why) -> None:
    dataset = validate(_with_target(values), "strength", source="frame")
    assert dataset.task == task == dataset.report.task
    assert why in dataset.report.task_reason
    if task == "regression":
        assert dataset.report.classes == {} and dataset.y.dtype == float
        assert dataset.report.target_summary["distinct"] == len(set(values))
    else:
        assert sum(dataset.report.classes.values()) == len(values)


def test_the_class_limit_is_a_setting_and_the_task_can_be_forced() -> None:
    ratings = _with_target(np.tile(np.arange(1, 11), 24))  # 10 distinct whole numbers
    assert validate(ratings, "strength", source="f").task == "classification"
    assert validate(ratings, "strength", source="f", max_classes=5).task == "regression"
    forced = validate(ratings, "strength", source="f", task="regression")
    assert forced.task == "regression" and "--task" in forced.report.task_reason


def test_a_regression_split_is_not_stratified_and_keeps_every_row() -> None:
    dataset = validate(_with_target(np.linspace(0.5, 99.5, 240)), "strength", source="f")
    halves = split(dataset, 0.2, 42)
    assert len(halves.X_holdout) == 48 and len(halves.X_train) == 192


def test_text_forced_to_regression_shows_a_few_values() -> None:
    labels = [f"grade {i}" for i in range(240)]
    message = _error(_with_target(labels), task="regression")
    assert "regression needs numbers, but 240 of 240 values are not" in message
    assert "e.g. 'grade 0', 'grade 1', 'grade 2' and 237 more" in message


def test_a_regression_target_needs_enough_rows() -> None:
    message = _error(_with_target(np.linspace(0.5, 9.5, 8)))
    assert "8 rows, too few for a holdout and the CV folds (at least 10)" in message
