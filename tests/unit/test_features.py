"""ml.features: raw columns in, predictions out; the skops trusted list is exact."""

from __future__ import annotations

import pandas as pd
import pytest
import skops.io as sio

from ml.data import validate
from ml.features import SKOPS_TRUSTED_TYPES, build_pipeline
from tests.unit.test_data import mixed_frame

# One small configuration per family, inside the tuning search space (ml.tuning), so tests
# can also enqueue them as trials.
PARAMS = {
    "logreg": {"family": "logreg", "C": 1.0},
    "random_forest": {
        "family": "random_forest",
        "n_estimators": 50,
        "max_depth": 3,
        "min_samples_leaf": 1,
        "max_features": "sqrt",
    },
    "hist_gb": {
        "family": "hist_gb",
        "learning_rate": 0.1,
        "max_iter": 50,
        "max_leaf_nodes": 7,
        "l2_regularization": 1e-6,
    },
}


@pytest.fixture(scope="module")
def dataset():
    return validate(mixed_frame(), "churned", source="frame")


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_pipeline_takes_raw_columns_and_unknown_categories(dataset, family: str) -> None:
    model = build_pipeline(PARAMS[family], dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    unseen = dataset.X.head(3).copy()
    unseen["plan"] = "enterprise"  # a category training never saw
    proba = model.predict_proba(unseen)
    assert proba.shape == (3, 2)
    assert set(model.classes_) == {False, True}


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_skops_trusted_types_are_exactly_what_skops_needs(dataset, family: str) -> None:
    model = build_pipeline(PARAMS[family], dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    assert sorted(untrusted) == sorted(SKOPS_TRUSTED_TYPES[family])
    restored = sio.loads(sio.dumps(model), trusted=SKOPS_TRUSTED_TYPES[family])
    pd.testing.assert_frame_equal(
        pd.DataFrame(restored.predict_proba(dataset.X)),
        pd.DataFrame(model.predict_proba(dataset.X)),
    )


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model family 'xgboost'"):
        build_pipeline({"family": "xgboost"}, {"a": "numeric"}, seed=0)
