"""ml.predict.pipeline_proba: the forest loop gives scikit-learn's own probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier

from ml.data import validate
from ml.features import build_pipeline
from ml.predict import pipeline_proba
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
