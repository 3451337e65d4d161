"""Data drift: a reference profile of the training features, and PSI / KS per feature.

The profile is logged with each model version (`reference_profile.json`), so a drift check
compares recent inputs with the data *that* version was trained on. Numeric features keep
decile bin edges with their training proportions (for PSI) and 201 quantiles (the reference
CDF for a KS test, `ks_pvalue`); categorical and boolean features keep category
frequencies (PSI only; KS is for continuous data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

# The artifact each model version's run logs the profile as (ml.training), read back by the
# drift check (elk.drift_check).
PROFILE_ARTIFACT = "reference_profile.json"
PROFILE_VERSION = 1
NUMERIC_BINS = 10
KS_QUANTILES = 201
MAX_CATEGORIES = 50
OTHER = "__other__"
KS_ALPHA = 0.01
# Floor for empty bins, so PSI stays finite (the usual choice in PSI implementations).
EPSILON = 1e-4


class DriftError(ValueError):
    """The inputs cannot be compared with the profile (no shared features, no rows)."""


def build_profile(frame: pd.DataFrame, feature_types: Mapping[str, str]) -> dict[str, Any]:
    """A JSON-ready summary of the training features."""
    features: dict[str, Any] = {}
    for column, kind in feature_types.items():
        if column not in frame.columns:
            continue
        values = frame[column]
        if kind == "numeric":
            features[column] = _numeric_profile(pd.to_numeric(values, errors="coerce"))
        else:
            features[column] = _categorical_profile(values)
    return {"version": PROFILE_VERSION, "rows": int(len(frame)), "features": features}


def _numeric_profile(values: pd.Series) -> dict[str, Any]:
    present = values.dropna().to_numpy(dtype=float)
    if present.size == 0:
        return {"type": "numeric", "edges": [], "proportions": [1.0], "quantiles": []}
    inner = np.unique(np.quantile(present, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(inner, present, side="right"), minlength=inner.size + 1)
    quantiles = np.quantile(present, np.linspace(0, 1, KS_QUANTILES))
    return {
        "type": "numeric",
        "edges": [float(edge) for edge in inner],
        "proportions": [float(count) / present.size for count in counts],
        "quantiles": [float(value) for value in quantiles],
        "null_fraction": float(values.isna().mean()),
    }


def _categorical_profile(values: pd.Series) -> dict[str, Any]:
    frequencies = values.astype("string").fillna("<null>").value_counts(normalize=True)
    kept = frequencies.head(MAX_CATEGORIES)
    proportions = {str(key): float(value) for key, value in kept.items()}
    rest = float(frequencies.iloc[MAX_CATEGORIES:].sum())
    if rest > 0:
        proportions[OTHER] = rest
    return {"type": "categorical", "proportions": proportions}


@dataclass(frozen=True)
class FeatureDrift:
    """PSI (and KS p-value for numeric features) of one feature over `rows` inputs."""

    feature: str
    feature_type: str
    psi: float
    ks_pvalue: float | None
    rows: int

    def drifted(self, threshold: float) -> bool:
        """PSI at or above the threshold, confirmed by KS for numeric features: on small
        windows PSI alone flags sampling noise (0.2 on an unshifted 114-row holdout)."""
        if self.psi < threshold:
            return False
        return self.ks_pvalue is None or self.ks_pvalue < KS_ALPHA


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    expected = np.clip(expected, EPSILON, None)
    actual = np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def compare(profile: Mapping[str, Any], frame: pd.DataFrame) -> list[FeatureDrift]:
    """PSI (and KS p-value for numeric features) of `frame` against `profile`, per feature."""
    if frame.empty:
        raise DriftError("no rows to compare with the reference profile")
    shared = [name for name in profile["features"] if name in frame.columns]
    if not shared:
        raise DriftError(
            "none of the profile's features are in the inputs "
            f"(expected some of: {', '.join(list(profile['features'])[:10])})"
        )
    reference_rows = int(profile.get("rows") or KS_QUANTILES)
    return [
        _compare_feature(name, profile["features"][name], frame[name], reference_rows)
        for name in shared
    ]


def ks_pvalue(values: np.ndarray, quantiles: np.ndarray, reference_rows: int) -> float:
    """Two-sample KS p-value of `values` against the reference the quantiles describe.

    The statistic is the largest gap between the values' CDF and the reference's (its
    quantiles, linearly interpolated), not a test against the quantiles as if they were 201
    rows: that missed a 0.15-sd shift in 2,000 rows 40 times in 40 (5,000 reference rows).
    The reference is itself a sample of `reference_rows` training rows, so the p-value uses
    the two-sample distribution, n m / (n + m): with the reference taken as exact, 5,000
    unshifted rows were flagged at p < 0.01 in 2 of 20 draws.
    """
    levels = np.linspace(0.0, 1.0, quantiles.size)
    statistic = stats.kstest(
        values, lambda x: np.interp(x, quantiles, levels, left=0.0, right=1.0)
    ).statistic
    effective = values.size * reference_rows / (values.size + reference_rows)
    return float(stats.kstwo.sf(statistic, max(1, round(effective))))


def _compare_feature(
    name: str, reference: Mapping[str, Any], values: pd.Series, reference_rows: int
) -> FeatureDrift:
    if reference["type"] == "numeric":
        present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
        edges = np.asarray(reference["edges"], dtype=float)
        counts = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=edges.size + 1
        )
        actual = counts / max(present.size, 1)
        score = psi(np.asarray(reference["proportions"], dtype=float), actual)
        pvalue = None
        if present.size and reference["quantiles"]:
            quantiles = np.asarray(reference["quantiles"], dtype=float)
            pvalue = ks_pvalue(present, quantiles, reference_rows)
        return FeatureDrift(name, "numeric", score, pvalue, int(present.size))
    expected_map: dict[str, float] = dict(reference["proportions"])
    observed = values.astype("string").fillna("<null>")
    known = observed.where(observed.isin(list(expected_map)), OTHER)
    actual_map = known.value_counts(normalize=True).to_dict()
    categories = sorted(set(expected_map) | set(actual_map))
    score = psi(
        np.array([expected_map.get(category, 0.0) for category in categories]),
        np.array([float(actual_map.get(category, 0.0)) for category in categories]),
    )
    return FeatureDrift(name, "categorical", score, None, int(len(observed)))


def summary(drifts: list[FeatureDrift], threshold: float) -> str:
    """A plain-text table for an alert email, worst feature first."""
    lines = [f"{'feature':<30} {'PSI':>8} {'KS p':>10}  drifted"]
    for drift in sorted(drifts, key=lambda item: item.psi, reverse=True):
        pvalue = "-" if drift.ks_pvalue is None else f"{drift.ks_pvalue:.3g}"
        flag = "YES" if drift.drifted(threshold) else ""
        psi_text = f"{drift.psi:.3f}" if math.isfinite(drift.psi) else "inf"
        lines.append(f"{drift.feature:<30} {psi_text:>8} {pvalue:>10}  {flag}")
    return "\n".join(lines)
