"""Load a registered model with what it needs to score raw rows; shared by CLI and serving."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml.common.tracking import TrackingUnavailable, require_reachable
from ml.common.values import some
from ml.data import DataError, FeatureType, coerce_features
from ml.decision import decide, split_threshold
from ml.common.tasks import CLASSIFICATION, REGRESSION
from ml.features import without_coercion
from ml.integrity import DIGEST_TAG, IntegrityError, check_digest
from ml.model_ref import ModelRef
from ml.registry import CHAMPION, RegistryError

log = logging.getLogger(__name__)

FORESTS = (RandomForestClassifier, ExtraTreesClassifier)
UNCHECKED = f"unchecked: no {DIGEST_TAG} tag (registered before digests were recorded)"


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
    target: str | None = None  # the column it was trained to predict (its metadata's)
    integrity: str = "sha256 verified"  # or UNCHECKED, for a version without the tag
    # Binary: `classes[1]` when its probability reaches this; None: the most probable class.
    threshold: float | None = None
    task: str = CLASSIFICATION  # regression: no classes, `predict_values` answers

    @property
    def is_regressor(self) -> bool:
        """True when the model answers a number, not a class."""
        return self.task == REGRESSION

    @property
    def ref(self) -> ModelRef:
        """The exact registered version, never an alias."""
        return ModelRef(self.name, self.version)

    @property
    def uri(self) -> str:
        """`models:/name/version`: the exact version, never an alias."""
        return self.ref.uri

    def without_target(
        self, frame: pd.DataFrame, configured: str | None = None
    ) -> tuple[pd.DataFrame, list[str]]:
        """(`frame` without a target column, the columns dropped): the model's own training
        target or the `configured` one (MLOPS_TARGET), never one of its features. Scoring a
        labelled file is the first thing a user tries."""
        targets = {name for name in (self.target, configured) if name} - set(self.feature_types)
        dropped = [column for column in frame.columns if column in targets]
        return frame.drop(columns=dropped), dropped

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw request rows -> the dtypes training saw; DataError names the bad column."""
        unknown = [column for column in frame.columns if column not in self.feature_types]
        if unknown:
            raise DataError(f"unknown feature columns {some(unknown)}")
        missing = [column for column in self.feature_types if column not in frame.columns]
        if missing:
            raise DataError(f"missing feature columns {some(missing)}")
        return coerce_features(frame[list(self.feature_types)], self.feature_types)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities for raw rows, columns in `classes` order."""
        return pipeline_proba(self.model, self.prepare(frame))

    def predict_values(self, frame: pd.DataFrame) -> np.ndarray:
        """A regressor's predicted values for raw rows (floats)."""
        return np.asarray(self.model.predict(self.prepare(frame)), dtype=float)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Labels and one probability column per class, the original labels restored; a
        regressor's values alone."""
        if self.is_regressor:
            return pd.DataFrame({"prediction": self.predict_values(frame)})
        proba = self.predict_proba(frame)
        labels = decide(proba, np.asarray(self.classes, dtype=object), self.threshold)
        result = pd.DataFrame({"prediction": labels})
        for index, label in enumerate(self.classes):
            result[f"proba_{label}"] = proba[:, index]
        return result


def pipeline_proba(pipeline: Any, frame: pd.DataFrame) -> np.ndarray:
    """`pipeline.predict_proba(frame)`, with a final forest scored by `estimator_proba`."""
    forest = pipeline[-1] if isinstance(pipeline, Pipeline) else None
    if not isinstance(forest, FORESTS) or forest.n_outputs_ != 1:
        return np.asarray(pipeline.predict_proba(frame))
    return estimator_proba(forest, pipeline[:-1].transform(frame))


def estimator_proba(estimator: Any, features: Any) -> np.ndarray:
    """`estimator.predict_proba(features)`, with a forest's trees summed in a plain loop.

    scikit-learn scores a forest with one joblib task per tree, and that dispatch costs more
    than the trees themselves on small inputs: one row through a 150-tree forest takes 9.4 ms,
    against 1.6 ms here. The arithmetic is scikit-learn's own (each tree's `predict_proba` on
    float32 input, summed in tree order, divided by the count), so the output is identical
    (tests/unit/test_predict.py). Anything unusual (sparse or non-finite features, several
    outputs) goes through scikit-learn's path and its validation errors.
    """
    if not isinstance(estimator, FORESTS) or estimator.n_outputs_ != 1:
        return np.asarray(estimator.predict_proba(features))
    if not isinstance(features, np.ndarray):
        return np.asarray(estimator.predict_proba(features))
    with np.errstate(over="ignore"):  # an overflow is caught just below
        as_float32 = np.ascontiguousarray(features, dtype=np.float32)  # the trees' input dtype
    if not np.isfinite(as_float32).all():
        return np.asarray(estimator.predict_proba(features))
    proba = np.zeros((len(as_float32), estimator.n_classes_))
    for tree in estimator.estimators_:
        proba += tree.predict_proba(as_float32, check_input=False)
    return proba / len(estimator.estimators_)


@dataclass(frozen=True)
class NumericTransform:
    """A fitted ColumnTransformer of imputers (each optionally followed by a StandardScaler)
    replayed as the same arithmetic on a float matrix.

    On a 32-row frame scikit-learn's ColumnTransformer costs about 2 ms a call (column lookups
    by name, validation, estimator tags), more than a 150-tree forest on those rows; serving
    transforms small batches of numeric rows all day. The steps are scikit-learn's: NaN
    replaced by the imputer's `statistics_`, then `-= mean_` and `/= scale_` in float64.
    `numeric_transform` builds one only when it reproduces the pipeline exactly.
    """

    positions: np.ndarray  # the input column behind each output column
    fill: np.ndarray  # the imputers' statistics
    offset: np.ndarray  # StandardScaler.mean_, 0 where not centred
    scale: np.ndarray  # StandardScaler.scale_, 1 where not scaled

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        features = np.asarray(rows, dtype=float)[:, self.positions]  # a copy: fancy indexing
        missing = np.isnan(features)
        if missing.any():
            features[missing] = np.broadcast_to(self.fill, features.shape)[missing]
        with np.errstate(over="ignore"):  # as scikit-learn: an overflow gives inf, refused later
            features -= self.offset
            features /= self.scale
        return features


def numeric_transform(pipeline: Any, columns: list[str]) -> NumericTransform | None:
    """The pipeline's preprocessing as a `NumericTransform` over matrices in `columns` order,
    or None when it has other steps (one-hot, indicators) or does not match it exactly."""
    preprocessor = pipeline[0] if isinstance(pipeline, Pipeline) and len(pipeline) == 2 else None
    if not isinstance(preprocessor, ColumnTransformer):
        return None
    found = [_numeric_part(step, names, columns) for step, names in _fitted_parts(preprocessor)]
    parts = [part for part in found if part is not None]
    if not parts or len(parts) != len(found):
        return None
    positions, fill, offset, scale = (np.concatenate(values) for values in zip(*parts))
    transform = NumericTransform(positions, fill, offset, scale)
    return transform if _reproduces(transform, preprocessor, columns) else None


def _fitted_parts(preprocessor: ColumnTransformer) -> list[tuple[Any, Any]]:
    """(fitted step, its columns) in output order; what the transform drops is left out."""
    return [
        (step, names)
        for name, step, names in preprocessor.transformers_
        if not (name == "remainder" and isinstance(step, str) and step == "drop")
    ]


def _numeric_part(
    step: Any, names: Any, columns: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    if not isinstance(names, list) or not names or not set(names) <= set(columns):
        return None
    steps = [item for _, item in step.steps] if isinstance(step, Pipeline) else [step]
    imputer, scaler = steps[0], steps[1] if len(steps) == 2 else None
    if len(steps) > 2 or not _plain_imputer(imputer):
        return None
    if not (scaler is None or isinstance(scaler, StandardScaler)):
        return None
    size = len(names)
    offset = scaler.mean_ if scaler is not None and scaler.with_mean else np.zeros(size)
    scale = scaler.scale_ if scaler is not None and scaler.with_std else np.ones(size)
    positions = np.array([columns.index(name) for name in names])
    return positions, imputer.statistics_.astype(float), np.asarray(offset), np.asarray(scale)


def _plain_imputer(step: Any) -> bool:
    """A SimpleImputer of NaN with numeric statistics, dropping no column, adding none."""
    return (
        isinstance(step, SimpleImputer)
        and not step.add_indicator
        and isinstance(step.missing_values, float)
        and np.isnan(step.missing_values)
        and step.statistics_.dtype.kind in "biuf"
        and not np.isnan(step.statistics_.astype(float)).any()  # all-missing: a dropped column
    )


def _reproduces(transform: NumericTransform, preprocessor: Any, columns: list[str]) -> bool:
    """Both give the same bits on rows around the fitted values, with and without gaps."""
    rng = np.random.default_rng(0)
    centre = np.zeros(len(columns))
    centre[transform.positions] = transform.fill
    rows = centre + rng.normal(size=(16, len(columns))) * np.maximum(np.abs(centre), 1.0)
    rows[::3, ::2] = np.nan
    try:
        expected = preprocessor.transform(pd.DataFrame(rows, columns=columns))
    except (TypeError, ValueError):
        return False
    return isinstance(expected, np.ndarray) and np.array_equal(transform(rows), expected)


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
    from the MLmodel file), its metadata and its input example from that copy.

    Scoring raw rows needs all of it; the promotion gate needs only the pipeline
    (`ml.registry.load_pipeline`). The registered pipeline's own coercion step is left out:
    `LoadedModel.prepare` coerces (and checks the columns) first, and serving's numeric fast
    path replays the preprocessing that follows it. A version registered before that step
    existed loads the same way."""
    try:
        uri = ModelRef(name, str(version)).uri
    except ValueError as exc:  # no such version can exist
        raise RegistryError(f"cannot load {name!r} version {version!r}: {exc}") from exc
    try:
        require_reachable(mlflow.get_tracking_uri())  # down: one line now, not 4 min of retries
    except TrackingUnavailable as exc:
        log.error(
            "loading %s failed: %s",
            uri,
            exc,
            extra=load_failure_fields(uri, exc, name, str(version)),
        )
        raise
    try:
        local_path = mlflow.artifacts.download_artifacts(uri)
        integrity = _verify(name, str(version), local_path)
        # The pipeline scores probabilities (its fast paths need it bare, without the coercion
        # step too); the threshold it was logged with decides (ml/decision.py).
        model, threshold = split_threshold(without_coercion(mlflow.sklearn.load_model(local_path)))
        info = mlflow.models.Model.load(local_path)
    except MlflowException as exc:
        log.error(
            "loading %s failed: %s",
            uri,
            exc.message,
            extra=load_failure_fields(uri, exc, name, str(version)),
        )
        raise RegistryError(f"cannot load {uri}: {exc.message}") from exc
    except IntegrityError as exc:
        log.error(
            "refusing to load %s", exc, extra=load_failure_fields(uri, exc, name, str(version))
        )
        raise RegistryError(f"refusing to load {exc}") from exc
    metadata = info.metadata or {}
    task = metadata.get("task") or CLASSIFICATION  # versions before regression: classifiers
    signature_columns = info.signature.inputs.input_names() if info.signature else []
    feature_types = metadata.get("feature_types") or dict.fromkeys(signature_columns, "numeric")
    return LoadedModel(
        name=name,
        version=str(version),
        run_id=info.run_id or "",
        model=model,
        feature_types=feature_types,
        classes=[] if task == REGRESSION else list(metadata.get("classes") or model.classes_),
        input_example=_input_example(info, local_path),
        loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        target=metadata.get("target"),
        integrity=integrity,
        threshold=threshold,
        task=task,
    )


def load_failure_fields(
    uri: str, error: BaseException | str, name: str | None = None, version: str | None = None
) -> dict[str, str]:
    """A failed model load as the ECS/`mlops.*` fields of its log record (the CLI's and a
    serving replica's)."""
    fields = {
        "event.action": "model-load",
        "event.outcome": "failure",
        "mlops.model.uri": uri,
        "error.message": str(error),
    }
    if isinstance(error, BaseException):
        fields["error.type"] = type(error).__name__
    if name is not None:
        fields["mlops.model.name"] = name
    if version is not None:
        fields["mlops.model.version"] = version
    return fields


def _verify(name: str, version: str, local_path: str) -> str:
    """The downloaded files against the version's recorded sha256 (IntegrityError when they
    differ); a version without the tag loads with a warning."""
    recorded = MlflowClient().get_model_version(name, version).tags.get(DIGEST_TAG)
    if recorded is None:
        log.warning("%s: %s", ModelRef(name, version).uri, UNCHECKED)
        return UNCHECKED
    check_digest(local_path, recorded, ModelRef(name, version).uri)
    return "sha256 verified"


def load_champion(name: str) -> LoadedModel:
    """The version that holds the `champion` alias right now."""
    return load_version(name, resolve_version(name))


def _input_example(info: mlflow.models.Model, local_path: str) -> pd.DataFrame | None:
    try:
        example = info.load_input_example(local_path)
    except (MlflowException, OSError, ValueError):
        return None
    return example if isinstance(example, pd.DataFrame) else None
