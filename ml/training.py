"""Refit the best trial on the training split, score it on the holdout, log and register it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any

import mlflow
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from ml.common.values import plain
from ml.config import Settings
from ml.data import Dataset, Split
from ml.decision import Classifier, split_threshold, with_threshold
from ml.drift import PROFILE_ARTIFACT, build_profile
from ml.evaluation import (
    confusion_matrix_figure,
    holdout_metrics,
    regression_figures,
    roc_curve_figure,
)
from ml.common.tasks import REGRESSION
from ml.features import build_pipeline, skops_trusted_types, with_coercion
from ml.integrity import DIGEST_TAG, model_digest
from ml.model_ref import ModelRef
from ml.registry import TASK_TAG

CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
# What a logged model needs at load time. Stating it beats MLflow's inference, which imports
# the model in a subprocess (17 of 36 s per registration here) and can guess wrong.
MODEL_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "scipy")


def pinned_requirements() -> list[str]:
    """`name==version` of what the model needs, as installed here."""
    return [f"{name}=={installed_version(name)}" for name in MODEL_REQUIREMENTS]


@dataclass(frozen=True)
class TrainedModel:
    """The refit pipeline and where it is registered."""

    model: Classifier
    ref: ModelRef
    holdout: dict[str, float]

    @property
    def version(self) -> str:
        """The registered version number."""
        return self.ref.version

    @property
    def model_uri(self) -> str:
        """`models:/<name>/<version>` of the registered version."""
        return self.ref.uri


def fit_best(
    params: dict[str, Any],
    dataset: Dataset,
    split: Split,
    seed: int,
    threshold: float | None = None,
) -> Classifier:
    """The chosen configuration refit on the whole training split; with a decision threshold,
    wrapped so its `predict` applies it (ml/decision.py)."""
    model = with_threshold(build_pipeline(params, dataset.feature_types, seed), threshold)
    return model.fit(split.X_train, split.y_train)


def model_metadata(dataset: Dataset, model: Classifier, params: dict[str, Any]) -> dict[str, Any]:
    """What serving needs beyond the signature; stored in the MLmodel file with the model.
    A regressor has no classes (an empty list) and no threshold."""
    regression = dataset.task == REGRESSION
    return {
        "target": dataset.target,
        "task": dataset.task,
        "feature_types": dataset.feature_types,
        "classes": [] if regression else [plain(label) for label in model.classes_],
        "family": params["family"],
        "data_fingerprint": dataset.report.fingerprint,
        # Positive class `classes[1]` when its probability reaches it; None: the most probable.
        "decision_threshold": split_threshold(model)[1],
    }


def raw_rows(dataset: Dataset, rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (coerced features) as the user's columns were loaded: what the signature and
    the input example describe, so MLflow's schema check accepts the raw table."""
    if dataset.raw_features is None:
        return rows
    return dataset.raw_features.loc[rows.index, list(rows.columns)]


def log_and_register(
    model: Classifier,
    params: dict[str, Any],
    dataset: Dataset,
    split: Split,
    settings: Settings,
) -> TrainedModel:
    """Log metrics, plots and the model into the active run; register it as `challenger`."""
    holdout = holdout_metrics(model, split.X_holdout, split.y_holdout)
    mlflow.log_metrics({f"holdout_{name}": value for name, value in holdout.items()})
    # The drift check compares serving inputs with the data this version was trained on.
    mlflow.log_dict(build_profile(split.X_train, dataset.feature_types), PROFILE_ARTIFACT)
    for name, figure in holdout_figures(model, dataset.task, split).items():
        mlflow.log_figure(figure, f"plots/{name}.png")
        plt.close(figure)

    raw_train = raw_rows(dataset, split.X_train)
    signature = infer_signature(raw_train, pd.Series(model.predict(split.X_train.head(20))))
    info = mlflow.sklearn.log_model(
        with_coercion(model, dataset.feature_types),
        name=MODEL_ARTIFACT,
        signature=signature,
        input_example=raw_train.head(3),
        registered_model_name=settings.model_name,
        serialization_format="skops",
        skops_trusted_types=skops_trusted_types(params),
        pip_requirements=pinned_requirements(),
        metadata=model_metadata(dataset, model, params),
    )
    ref = ModelRef(settings.model_name, str(info.registered_model_version))
    client = MlflowClient()
    client.set_model_version_tag(ref.name, ref.version, DIGEST_TAG, stored_digest(ref))
    client.set_model_version_tag(
        ref.name, ref.version, "data.fingerprint", dataset.report.fingerprint
    )
    client.set_model_version_tag(ref.name, ref.version, TASK_TAG, dataset.task)
    for name, value in holdout.items():
        client.set_model_version_tag(ref.name, ref.version, f"holdout.{name}", f"{value:.6f}")
    # The alias last: a run stopped before here leaves a version no alias points at.
    client.set_registered_model_alias(ref.name, CHALLENGER, ref.version)
    return TrainedModel(model=model, ref=ref, holdout=holdout)


def holdout_figures(model: Classifier, task: str, split: Split) -> dict[str, Any]:
    """A regressor's residual and predicted-vs-actual plots; a classifier's confusion matrix
    and ROC curve."""
    holdout = (split.X_holdout, split.y_holdout)
    if task == REGRESSION:
        return regression_figures(model, *holdout)
    return {
        "confusion_matrix": confusion_matrix_figure(model, *holdout),
        "roc_curve": roc_curve_figure(model, *holdout),
    }


def stored_digest(ref: ModelRef) -> str:
    """The sha256 of the version's files as the store gives them back: reading them proves
    they all arrived before any alias points at the version."""
    with tempfile.TemporaryDirectory(prefix="mlops-digest-") as scratch:
        return model_digest(mlflow.artifacts.download_artifacts(ref.uri, dst_path=scratch))
