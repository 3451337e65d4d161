"""Load a registered model with what it needs to score raw rows; shared by CLI and serving."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.data import DataError, FeatureType, coerce_features
from ml.registry import CHAMPION, RegistryError


@dataclass
class LoadedModel:
    """A fitted pipeline plus its name, version, feature types and classes."""

    name: str
    version: str
    run_id: str
    model: Any
    feature_types: dict[str, FeatureType]
    classes: list[Any]
    input_example: pd.DataFrame | None
    loaded_at: str

    @property
    def uri(self) -> str:
        """`models:/name/version`: the exact version, never an alias."""
        return f"models:/{self.name}/{self.version}"

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw request rows -> the dtypes training saw; DataError names the bad column."""
        unknown = [column for column in frame.columns if column not in self.feature_types]
        if unknown:
            raise DataError(f"unknown feature columns {unknown}")
        missing = [column for column in self.feature_types if column not in frame.columns]
        if missing:
            raise DataError(f"missing feature columns {missing}")
        return coerce_features(frame[list(self.feature_types)], self.feature_types)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities for raw rows, columns in `classes` order."""
        return np.asarray(self.model.predict_proba(self.prepare(frame)))

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Labels and one probability column per class, the original labels restored."""
        proba = self.predict_proba(frame)
        labels = np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]
        result = pd.DataFrame({"prediction": labels})
        for index, label in enumerate(self.classes):
            result[f"proba_{label}"] = proba[:, index]
        return result


def resolve_version(name: str, alias: str = CHAMPION) -> str:
    """The version number an alias points at; serving deploys the number, not the alias."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise RegistryError(
            f"model {name!r} has no {alias!r} version: train one first " f"(`mlops pipeline`)"
        ) from exc


def load_version(name: str, version: str) -> LoadedModel:
    """Download `models:/name/version` once; load the sklearn flavor (skops, trusted types
    from the MLmodel file), its metadata and its input example from that copy."""
    uri = f"models:/{name}/{version}"
    try:
        local_path = mlflow.artifacts.download_artifacts(uri)
        model = mlflow.sklearn.load_model(local_path)
        info = mlflow.models.Model.load(local_path)
    except MlflowException as exc:
        raise RegistryError(f"cannot load {uri}: {exc.message}") from exc
    metadata = info.metadata or {}
    signature_columns = info.signature.inputs.input_names() if info.signature else []
    feature_types = metadata.get("feature_types") or dict.fromkeys(signature_columns, "numeric")
    return LoadedModel(
        name=name,
        version=str(version),
        run_id=info.run_id or "",
        model=model,
        feature_types=feature_types,
        classes=list(metadata.get("classes") or list(model.classes_)),
        input_example=_input_example(info, local_path),
        loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def load_champion(name: str) -> LoadedModel:
    """The version that holds the `champion` alias right now."""
    return load_version(name, resolve_version(name))


def _input_example(info: mlflow.models.Model, local_path: str) -> pd.DataFrame | None:
    try:
        example = info.load_input_example(local_path)
    except (MlflowException, OSError, ValueError):
        return None
    return example if isinstance(example, pd.DataFrame) else None
