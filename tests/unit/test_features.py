"""ml.features: raw columns in, predictions out; the skops trusted list is exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from ml.data import DataError, validate
from ml.families import FAMILIES, family
from ml.features import COERCION_TRUSTED_TYPES, build_pipeline, with_coercion, without_coercion
from tests.unit.test_data import mixed_frame

# One small configuration per family, inside the tuning search space (ml.tuning), so tests
# can also enqueue them as trials.
PARAMS = {
    "logreg": {"family": "logreg", "C": 1.0, "class_weight": None},
    "random_forest": {
        "family": "random_forest",
        "n_estimators": 50,
        "max_depth": 3,
        "min_samples_leaf": 1,
        "max_features": "sqrt",
        "class_weight": "balanced",
    },
    "hist_gb": {
        "family": "hist_gb",
        "learning_rate": 0.1,
        "max_iter": 50,
        "max_leaf_nodes": 7,
        "hgb_min_samples_leaf": 20,
        "l2_regularization": 1e-6,
        "class_weight": None,
    },
}


def test_every_family_in_the_table_has_a_test_configuration() -> None:
    assert sorted(PARAMS) == sorted(FAMILIES)


@pytest.fixture(scope="module")
def dataset():
    return validate(mixed_frame(), "churned", source="frame")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_pipeline_takes_raw_columns_and_unknown_categories(dataset, name: str) -> None:
    model = build_pipeline(PARAMS[name], dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    unseen = dataset.X.head(3).copy()
    unseen["plan"] = "enterprise"  # a category training never saw
    proba = model.predict_proba(unseen)
    assert proba.shape == (3, 2)
    assert set(model.classes_) == {False, True}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_skops_trusted_types_are_exactly_what_skops_needs(dataset, name: str) -> None:
    model = build_pipeline(PARAMS[name], dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    trusted = list(family(name).skops_trusted_types)
    assert sorted(untrusted) == sorted(trusted)
    restored = sio.loads(sio.dumps(model), trusted=trusted)
    pd.testing.assert_frame_equal(
        pd.DataFrame(restored.predict_proba(dataset.X)),
        pd.DataFrame(model.predict_proba(dataset.X)),
    )


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model family 'xgboost'; known families: "):
        build_pipeline({"family": "xgboost"}, {"a": "numeric"}, seed=0)


def numeric_steps(model) -> list[str]:
    numeric = dict((name, step) for name, step, _ in model.named_steps["preprocess"].transformers)
    return [name for name, _ in numeric["numeric"].steps]


def test_every_family_scales_numbers_as_before_the_table(dataset) -> None:
    """The pipelines registered before the family table scaled numbers for every family."""
    for name in FAMILIES:
        model = build_pipeline(PARAMS[name], dataset.feature_types, seed=0)
        assert numeric_steps(model) == ["impute", "scale"]


def test_a_family_that_does_not_scale_gets_no_scaler(dataset, monkeypatch) -> None:
    import dataclasses

    import ml.families

    unscaled = dataclasses.replace(family("random_forest"), scale_numeric=False)
    monkeypatch.setattr(ml.families, "FAMILIES", {**FAMILIES, "random_forest": unscaled})
    model = build_pipeline(PARAMS["random_forest"], dataset.feature_types, seed=0)
    assert numeric_steps(model) == ["impute"]


# --- the registered pipeline: coercion first --------------------------------------------------


def test_registered_pipeline_scores_raw_rows_as_the_coerced_ones(dataset) -> None:
    """`with_coercion` puts `ml.data.coerce_features` inside the model: the raw columns (the
    TRUE/FALSE text, the gaps) score exactly as the coerced frame through the bare pipeline."""
    model = build_pipeline(PARAMS["logreg"], dataset.feature_types, seed=0).fit(
        dataset.X, dataset.y
    )
    registered = with_coercion(model, dataset.feature_types)
    raw = dataset.raw_features
    assert raw["member"].isin(["TRUE", "FALSE"]).all()  # really the raw text
    np.testing.assert_array_equal(
        registered.predict_proba(raw.iloc[:, ::-1]), model.predict_proba(dataset.X)
    )
    # Its own output passes through unchanged: the gate scores coerced holdouts with it.
    np.testing.assert_array_equal(registered.predict(dataset.X), model.predict(dataset.X))
    assert without_coercion(registered).steps == model.steps
    assert without_coercion(model) is model


def test_registered_pipeline_names_the_column_it_cannot_coerce(dataset) -> None:
    model = build_pipeline(PARAMS["logreg"], dataset.feature_types, seed=0).fit(
        dataset.X, dataset.y
    )
    registered = with_coercion(model, dataset.feature_types)
    raw = dataset.raw_features.head(3).copy()
    raw["member"] = "maybe"
    with pytest.raises(DataError, match="column 'member' must be true/false, got 'maybe'"):
        registered.predict(raw)
    with pytest.raises(DataError, match="missing feature column 'spend'"):
        registered.predict(dataset.raw_features.drop(columns="spend"))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_registered_pipeline_needs_the_family_types_and_the_coercion_step(
    dataset, name: str
) -> None:
    model = build_pipeline(PARAMS[name], dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    saved = sio.dumps(with_coercion(model, dataset.feature_types))
    trusted = [*family(name).skops_trusted_types, *COERCION_TRUSTED_TYPES]
    assert sorted(sio.get_untrusted_types(data=saved)) == sorted(trusted)
    restored = sio.loads(saved, trusted=trusted)
    np.testing.assert_array_equal(
        restored.predict_proba(dataset.raw_features), model.predict_proba(dataset.X)
    )
