"""Preprocessing and model construction: one sklearn Pipeline, so serving takes raw columns.

What differs per model family (its estimator, whether numbers are scaled) is its entry in
`ml.families`; this module assembles the pipeline around it.
"""

from __future__ import annotations

from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.data import FeatureType
from ml.families import family


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


def build_classifier(params: dict[str, Any], seed: int) -> ClassifierMixin:
    """The estimator for one set of tuned params; `params['family']` picks the table entry."""
    hyper = {key: value for key, value in params.items() if key != "family"}
    return family(params["family"]).build(hyper, seed)


def build_pipeline(
    params: dict[str, Any], feature_types: dict[str, FeatureType], seed: int
) -> Pipeline:
    """Preprocessing plus the classifier: what is tuned, registered and served."""
    return Pipeline(
        [
            (
                "preprocess",
                build_preprocessor(feature_types, family(params["family"]).scale_numeric),
            ),
            ("model", build_classifier(params, seed)),
        ]
    )
