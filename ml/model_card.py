"""What people are shown about one registered version (serving's `/overview`, the `/ui` page):
the gate's decision and holdout scores (its `gate.*` and `holdout.*` tags), a hint per feature
from the training data's reference profile (numeric range, categories seen), and the
continuous-training state around it (the newest CT runs, live quality of its predictions).

The hints are hints: serving accepts values outside the training range and unseen categories
(the model imputes or ignores them); the page shows the range, it does not enforce it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Mapping

from mlflow.tracking import MlflowClient

from ml import ct
from ml.config import Settings
from ml.data import FeatureType
from ml.drift import OTHER, PROFILE_ARTIFACT
from ml.outcomes import OutcomeStore
from ml.retrain import recent_runs

MISSING = "<null>"  # how the reference profile counts missing categorical values
CT_RUNS_SHOWN = 10


@dataclass(frozen=True)
class FeatureHint:
    """One input of the form: its type, and what training saw of it."""

    name: str
    type: FeatureType
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelCard:
    """A registered version as people see it; `errors` says what could not be read."""

    promotion: dict[str, str]
    holdout: dict[str, float]
    features: list[FeatureHint]
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The card as plain JSON values (`/overview` answers it)."""
        return asdict(self)


def feature_hints(
    feature_types: Mapping[str, FeatureType], profile: Mapping[str, Any] | None
) -> list[FeatureHint]:
    """A hint per feature, in the model's feature order: numeric features get the training
    minimum and maximum (the profile's outer quantiles), the others the categories seen, most
    frequent first. A feature the profile lacks gets its type only."""
    described = (profile or {}).get("features", {})
    return [_hint(name, kind, described.get(name)) for name, kind in feature_types.items()]


def _hint(name: str, kind: FeatureType, described: Mapping[str, Any] | None) -> FeatureHint:
    if not described:
        return FeatureHint(name, kind)
    if described.get("type") == "numeric":
        quantiles = described.get("quantiles") or []
        if not quantiles:
            return FeatureHint(name, kind)
        return FeatureHint(name, kind, minimum=quantiles[0], maximum=quantiles[-1])
    seen = [value for value in described.get("proportions", {}) if value not in (OTHER, MISSING)]
    return FeatureHint(name, kind, categories=seen)


def read_card(name: str, version: str, feature_types: Mapping[str, FeatureType]) -> ModelCard:
    """The version's tags and its run's reference profile from the registry; what cannot be
    read is named in `errors` and left out, so the page still shows the rest."""
    client = MlflowClient()
    errors: list[str] = []
    tags: dict[str, str] = {}
    run_id = None
    try:
        found = client.get_model_version(name, version)
        tags, run_id = dict(found.tags or {}), found.run_id
    except Exception as exc:  # pylint: disable=broad-exception-caught
        errors.append(f"registry: {exc}")
    profile = None
    if run_id:
        try:
            with open(client.download_artifacts(run_id, PROFILE_ARTIFACT), encoding="utf-8") as f:
                profile = json.load(f)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            errors.append(f"{PROFILE_ARTIFACT}: {exc}")
    return ModelCard(
        promotion=_prefixed(tags, "gate."),
        holdout={key: float(value) for key, value in _prefixed(tags, "holdout.").items()},
        features=feature_hints(feature_types, profile),
        errors=errors,
    )


def _prefixed(tags: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {
        key.removeprefix(prefix): value for key, value in tags.items() if key.startswith(prefix)
    }


def ct_state(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """The newest CT runs (what fired, what they did) and live quality of this version's own
    labelled predictions over the CT windows; an error in place of what cannot be read."""
    state: dict[str, Any] = {}
    try:
        state["runs"] = recent_runs(settings, CT_RUNS_SHOWN)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        state["runs"], state["runs_error"] = [], f"CT database: {exc}"
    try:
        served = ct.load_version_info(MlflowClient(), name, version)
        store = OutcomeStore(settings.ct_database)
        windows = ct.quality_windows(settings, served, store, datetime.now(UTC))
        state["quality"] = [asdict(window) for window in windows]
    except Exception as exc:  # pylint: disable=broad-exception-caught
        state["quality"], state["quality_error"] = [], f"live quality: {exc}"
    return state


class RegistryDescriber:
    """`read_card` and `ct_state` with one replica's settings (what `ModelService` asks)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def card(self, name: str, version: str, feature_types: Mapping[str, FeatureType]) -> ModelCard:
        """`read_card` of this version."""
        return read_card(name, version, feature_types)

    def ct_state(self, name: str, version: str) -> dict[str, Any]:
        """`ct_state` of this version, with this replica's CT database."""
        return ct_state(self._settings, name, version)
