"""Preprocessing and model construction: one sklearn Pipeline, so serving takes raw columns.

What differs per model family (its estimator, whether numbers are scaled) is its entry in
`ml.families`; this module assembles the pipeline around it. The registered pipeline starts
with `CoerceFeatures` (`with_coercion`), so any MLflow consumer scores the raw columns.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.data import FeatureType, coerce_features
from ml.families import LOG_TARGET, family

# What skops must trust to load a registered pipeline beyond its family's types.
COERCION_TRUSTED_TYPES = ("ml.features.CoerceFeatures",)


class CoerceFeatures(TransformerMixin, BaseEstimator):
    """Raw feature columns -> the dtypes training saw (`ml.data.coerce_features`): yes/no to
    1.0/0.0, integers to floats, categories to text. Stateless: the feature types are the
    training data's, given, not learned. It takes its own output unchanged, so already
    coerced rows (the gate's holdout, serving's prepared rows) pass through it too.

    The first step of every registered pipeline: `mlflow.pyfunc` and `mlflow models serve`
    then score the rows a user has, as our server does, with no coercion of their own."""

    def __init__(self, feature_types: dict[str, FeatureType] | None = None) -> None:
        self.feature_types = feature_types

    def fit(self, X: pd.DataFrame, y: object = None) -> CoerceFeatures:  # noqa: N803
        """Nothing to learn."""
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:  # noqa: N803
        """The feature columns, in training order, coerced; DataError names a bad column."""
        types = dict(self.feature_types or {})
        return coerce_features(pd.DataFrame(X), types)[list(types)]

    def __sklearn_is_fitted__(self) -> bool:
        return True  # stateless: the Pipeline's fitted check must not refuse it


def with_coercion(model: BaseEstimator, feature_types: dict[str, FeatureType]) -> Pipeline:
    """The fitted `model` (a pipeline, or a thresholded classifier around one) behind a
    `CoerceFeatures` step: what is registered."""
    steps = model.steps if isinstance(model, Pipeline) else [("model", model)]
    return Pipeline([("coerce", CoerceFeatures(dict(feature_types))), *steps])


def without_coercion(model: BaseEstimator) -> BaseEstimator:
    """A registered model minus its leading `CoerceFeatures`, for callers that coerce (and
    check) rows themselves first: the pipeline after it, or the one estimator after it (a
    thresholded classifier); a version registered before the step existed is as it was."""
    if isinstance(model, Pipeline) and len(model) > 1 and isinstance(model[0], CoerceFeatures):
        rest = model[1:]
        return rest[0] if len(rest) == 1 else rest
    return model


def build_preprocessor(
    feature_types: dict[str, FeatureType], scale_numeric: bool = True
) -> ColumnTransformer:
    """Impute (+ scale, unless the family says not to) numbers, impute + one-hot categories
    (unknown ones ignored)."""
    numeric = [c for c, kind in feature_types.items() if kind == "numeric"]
    boolean = [c for c, kind in feature_types.items() if kind == "boolean"]
    categorical = [c for c, kind in feature_types.items() if kind == "categorical"]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        if scale_numeric:
            steps.append(("scale", StandardScaler()))
        transformers.append(("numeric", Pipeline(steps), numeric))
    if boolean:  # already 1.0/0.0 from ml.data.coerce_features: impute only
        transformers.append(("boolean", SimpleImputer(strategy="most_frequent"), boolean))
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def build_estimator(params: dict[str, Any], seed: int) -> BaseEstimator:
    """The estimator for one set of tuned params; `params['family']` picks the table entry.
    A regressor with `log_target` learns log1p(target) and answers expm1 of its prediction
    (scikit-learn's `TransformedTargetRegressor`)."""
    hyper = {key: value for key, value in params.items() if key not in {"family", LOG_TARGET}}
    estimator = family(params["family"]).build(hyper, seed)
    if params.get(LOG_TARGET):
        # check_inverse off: expm1 inverts log1p exactly, the check only costs a fit's time
        return TransformedTargetRegressor(
            estimator, func=np.log1p, inverse_func=np.expm1, check_inverse=False
        )
    return estimator


def skops_trusted_types(params: dict[str, Any]) -> list[str]:
    """What skops must trust to load the registered pipeline of these params."""
    return [*family(params["family"]).skops_trusted_types, *COERCION_TRUSTED_TYPES]


def build_pipeline(
    params: dict[str, Any], feature_types: dict[str, FeatureType], seed: int
) -> Pipeline:
    """Preprocessing plus the estimator: what is tuned, registered and served."""
    return Pipeline(
        [
            (
                "preprocess",
                build_preprocessor(feature_types, family(params["family"]).scale_numeric),
            ),
            ("model", build_estimator(params, seed)),
        ]
    )
