"""ml.predict: the forest loop and the numeric transform give scikit-learn's own numbers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier

from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.data import DataError, load_frame, validate
from ml.features import CoerceFeatures, build_pipeline
from ml.predict import estimator_proba, load_champion, numeric_transform, pipeline_proba
from ml.registry import load_pipeline
from tests.unit.registry_support import demo_split, register_champion
from tests.unit.test_data import mixed_frame
from tests.unit.test_features import PARAMS


@pytest.fixture(scope="module")
def dataset():
    return validate(mixed_frame(), "churned", source="frame")


def _forest(dataset, extra_trees: bool):
    model = build_pipeline(PARAMS["random_forest"], dataset.feature_types, seed=0)
    if extra_trees:
        model.set_params(model=ExtraTreesClassifier(n_estimators=12, random_state=0))
    return model.fit(dataset.X, dataset.y)


@pytest.mark.parametrize("extra_trees", [False, True], ids=["random_forest", "extra_trees"])
@pytest.mark.parametrize("rows", [1, 7, None], ids=["one", "seven", "all"])
def test_forest_loop_equals_sklearn(dataset, extra_trees: bool, rows: int | None) -> None:
    model = _forest(dataset, extra_trees)
    frame = dataset.X if rows is None else dataset.X.head(rows)
    ours = pipeline_proba(model, frame)
    theirs = model.predict_proba(frame)
    assert ours.shape == theirs.shape == (len(frame), len(model.classes_))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("family", ["logreg", "hist_gb"])
def test_other_families_are_sklearn_as_is(dataset, family: str) -> None:
    model = build_pipeline(PARAMS[family], dataset.feature_types, seed=0)
    model.fit(dataset.X, dataset.y)
    np.testing.assert_array_equal(pipeline_proba(model, dataset.X), model.predict_proba(dataset.X))


def test_values_beyond_float32_keep_sklearns_error(dataset) -> None:
    """A value that overflows the trees' float32 input must fail as scikit-learn fails (a
    ValueError serving turns into a 4xx), not be scored as infinity."""
    model = _forest(dataset, extra_trees=False)
    numeric = next(column for column in dataset.X if dataset.feature_types[column] == "numeric")
    frame = dataset.X.head(2).copy()
    frame[numeric] = frame[numeric].astype(float)
    frame.loc[frame.index[0], numeric] = 1e300
    with pytest.raises(ValueError) as theirs:
        model.predict_proba(frame)
    with pytest.raises(ValueError) as ours:
        pipeline_proba(model, frame)
    assert str(ours.value) == str(theirs.value)


@pytest.fixture(scope="module")
def numeric_dataset():
    """Numeric and boolean columns only (no one-hot), with gaps: what serving takes as floats."""
    return validate(mixed_frame().drop(columns=["plan"]), "churned", source="frame")


@pytest.mark.parametrize("family", ["logreg", "random_forest", "hist_gb"])
def test_numeric_transform_reproduces_the_column_transformer(numeric_dataset, family) -> None:
    model = build_pipeline(PARAMS[family], numeric_dataset.feature_types, seed=0)
    model.fit(numeric_dataset.X, numeric_dataset.y)
    columns = list(numeric_dataset.X.columns)
    transform = numeric_transform(model, columns)
    assert transform is not None
    rows = numeric_dataset.X.to_numpy(dtype=float)
    assert np.isnan(rows).any()  # the imputers' part is exercised
    np.testing.assert_array_equal(transform(rows), model[0].transform(numeric_dataset.X))
    np.testing.assert_array_equal(
        estimator_proba(model[-1], transform(rows)), model.predict_proba(numeric_dataset.X)
    )


def test_numeric_transform_follows_the_given_column_order(numeric_dataset) -> None:
    model = build_pipeline(PARAMS["logreg"], numeric_dataset.feature_types, seed=0)
    model.fit(numeric_dataset.X, numeric_dataset.y)
    reordered = list(reversed(numeric_dataset.X.columns))
    transform = numeric_transform(model, reordered)
    assert transform is not None
    np.testing.assert_array_equal(
        transform(numeric_dataset.X[reordered].to_numpy(dtype=float)),
        model[0].transform(numeric_dataset.X),
    )


def test_numeric_transform_refuses_what_it_cannot_replay(dataset, numeric_dataset) -> None:
    """One-hot categories, and a column the imputer dropped for being empty in training."""
    one_hot = build_pipeline(PARAMS["logreg"], dataset.feature_types, seed=0)
    one_hot.fit(dataset.X, dataset.y)
    assert numeric_transform(one_hot, list(dataset.X.columns)) is None

    empty = numeric_dataset.X.assign(age=np.nan)
    dropped = build_pipeline(PARAMS["logreg"], numeric_dataset.feature_types, seed=0)
    with pytest.warns(UserWarning, match="age"):
        dropped.fit(empty, numeric_dataset.y)
    assert numeric_transform(dropped, list(empty.columns)) is None


def test_numeric_path_keeps_sklearns_overflow_error(numeric_dataset) -> None:
    """Serving's float path must refuse a value beyond float32 as scikit-learn does."""
    model = build_pipeline(PARAMS["random_forest"], numeric_dataset.feature_types, seed=0)
    model.fit(numeric_dataset.X, numeric_dataset.y)
    columns = list(numeric_dataset.X.columns)
    rows = numeric_dataset.X.head(2).to_numpy(dtype=float, copy=True)
    rows[0, columns.index("spend")] = 1e300
    transform = numeric_transform(model, columns)
    assert transform is not None
    with pytest.raises(ValueError, match="infinity or a value too large"):
        estimator_proba(model[-1], transform(rows))


# --- scoring a labelled file with the registered champion (local SQLite MLflow) ----------


@pytest.fixture(scope="module", name="champion_settings")
def _champion_settings(tmp_path_factory):
    """A demo logistic regression registered and promoted once for the tests below."""
    settings = Settings(var_dir=tmp_path_factory.mktemp("predict") / "var", model_name="scored")
    register_champion(settings, demo_split())
    return settings


def _labelled(rows: int = 4) -> pd.DataFrame:
    return load_frame("demo").head(rows)  # the demo's features and its target column "target"


def test_the_champion_knows_its_target_and_drops_it_not_a_feature(champion_settings) -> None:
    configure_tracking(champion_settings)
    champion = load_champion("scored")
    assert champion.target == "target"
    features, dropped = champion.without_target(_labelled())
    assert dropped == ["target"] and set(features.columns) == set(champion.feature_types)
    assert len(champion.predict_frame(features)) == 4
    renamed = _labelled().rename(columns={"target": "label"})
    assert champion.without_target(renamed, configured="label")[1] == ["label"]
    feature = next(iter(champion.feature_types))  # a configured "target" that is a feature
    assert champion.without_target(renamed, configured=feature)[1] == []


def test_other_unknown_columns_still_fail_naming_a_few(champion_settings) -> None:
    configure_tracking(champion_settings)
    champion = load_champion("scored")
    extra = _labelled().assign(**{f"extra_{i}": 1 for i in range(50)})
    with pytest.raises(DataError) as error:
        champion.prepare(champion.without_target(extra)[0])
    assert str(error.value) == (
        "unknown feature columns 'extra_0', 'extra_1', 'extra_2' and 47 more"
    )


def test_mlops_predict_drops_the_target_and_says_so_on_stderr(champion_settings, tmp_path) -> None:
    from typer.testing import CliRunner

    from ml.cli import app

    rows = tmp_path / "labelled.csv"
    _labelled(5).to_csv(rows, index=False)
    env = {
        "MLOPS_VAR_DIR": str(champion_settings.var_dir),
        "MLFLOW_TRACKING_URI": champion_settings.mlflow_tracking_uri,
        "MLOPS_MODEL_NAME": "scored",
    }
    result = CliRunner().invoke(app, ["predict", "--input", str(rows)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "column 'target' dropped: it is the target, not a feature of scored version 1"
    )
    predictions = pd.read_csv(io.StringIO(result.stdout))
    assert len(predictions) == 5 and set(predictions["prediction"]) <= {"malignant", "benign"}


def test_a_registered_numeric_model_keeps_servings_fast_path(champion_settings) -> None:
    """The registered pipeline starts with `CoerceFeatures`; the loader leaves it out (rows are
    coerced by `LoadedModel.prepare` first), so serving's numeric transform still replays the
    preprocessing and scores float matrices as the whole registered pipeline scores frames."""
    from serving.model import ServedModel

    configure_tracking(champion_settings)
    champion = load_champion("scored")
    registered = load_pipeline(champion.ref)
    assert isinstance(registered[0], CoerceFeatures) and len(registered) == 3
    served = ServedModel.of(champion)
    assert served.numeric is not None
    rows = _labelled(8).drop(columns="target")
    matrix = rows[served.validator.columns].to_numpy(dtype=float)
    np.testing.assert_array_equal(served.predict_proba(matrix), registered.predict_proba(rows))
