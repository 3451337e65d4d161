"""Preprocessing and model construction: one sklearn Pipeline, so serving takes raw columns."""

from __future__ import annotations

from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.data import FeatureType

# skops refuses to load types it does not trust; these are the ones our pipelines need beyond
# skops' defaults. Kept explicit and minimal: tests/unit/test_features.py checks the list equals
# what skops reports for a fitted pipeline of each family.
SKOPS_TRUSTED_TYPES: dict[str, list[str]] = {
    "logreg": ["numpy.dtype"],
    "random_forest": ["numpy.dtype", "sklearn.tree._tree.Tree"],
    "hist_gb": [
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    ],
}


def build_preprocessor(feature_types: dict[str, FeatureType]) -> ColumnTransformer:
    """Impute + scale numbers, impute + one-hot categories (unknown ones ignored)."""
    numeric = [c for c, kind in feature_types.items() if kind == "numeric"]
    boolean = [c for c, kind in feature_types.items() if kind == "boolean"]
    categorical = [c for c, kind in feature_types.items() if kind == "categorical"]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median")),
                        ("scale", StandardScaler()),
                    ]
                ),
                numeric,
            )
        )
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
    """The estimator for one set of tuned params; `params['family']` picks the model."""
    family = params["family"]
    hyper = {key: value for key, value in params.items() if key != "family"}
    if family == "logreg":
        return LogisticRegression(C=hyper["C"], max_iter=2000, random_state=seed)
    if family == "random_forest":
        return RandomForestClassifier(
            n_estimators=hyper["n_estimators"],
            max_depth=hyper["max_depth"],
            min_samples_leaf=hyper["min_samples_leaf"],
            max_features=hyper["max_features"],
            n_jobs=1,  # parallelism is across trials, not inside one
            random_state=seed,
        )
    if family == "hist_gb":
        return HistGradientBoostingClassifier(
            learning_rate=hyper["learning_rate"],
            max_iter=hyper["max_iter"],
            max_leaf_nodes=hyper["max_leaf_nodes"],
            l2_regularization=hyper["l2_regularization"],
            early_stopping=False,
            random_state=seed,
        )
    raise ValueError(f"families: unknown model family {family!r}")


def build_pipeline(
    params: dict[str, Any], feature_types: dict[str, FeatureType], seed: int
) -> Pipeline:
    """Preprocessing plus the classifier: what is tuned, registered and served."""
    return Pipeline(
        [
            ("preprocess", build_preprocessor(feature_types)),
            ("model", build_classifier(params, seed)),
        ]
    )
