"""ml.drift: reference profiles and PSI / KS on the bundled demo data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml.data import load_dataset, split
from ml.drift import KS_ALPHA, DriftError, build_profile, compare, psi, summary


@pytest.fixture(scope="module")
def demo():
    dataset = load_dataset("demo", None, cv_folds=3, test_size=0.2)
    return dataset, split(dataset, 0.2, 42)


def test_profile_is_json_and_covers_every_feature(demo) -> None:
    dataset, parts = demo
    profile = build_profile(parts.X_train, dataset.feature_types)
    assert set(profile["features"]) == set(dataset.feature_types)
    numeric = next(iter(profile["features"].values()))
    assert sum(numeric["proportions"]) == pytest.approx(1.0)
    assert len(numeric["quantiles"]) == 201
    json.loads(json.dumps(profile))


def test_same_distribution_does_not_drift(demo) -> None:
    dataset, parts = demo
    profile = build_profile(parts.X_train, dataset.feature_types)
    drifts = compare(profile, parts.X_train.sample(frac=1.0, random_state=1))
    assert max(drift.psi for drift in drifts) < 0.05
    assert not [drift for drift in drifts if drift.drifted(0.2)]


def test_shifted_features_drift_and_others_do_not(demo) -> None:
    dataset, parts = demo
    profile = build_profile(parts.X_train, dataset.feature_types)
    shifted = parts.X_train.copy()
    moved = ["mean radius", "worst area"]
    for column in moved:
        shifted[column] = shifted[column] + 3 * shifted[column].std()
    drifts = {drift.feature: drift for drift in compare(profile, shifted)}
    assert {name for name, drift in drifts.items() if drift.drifted(0.2)} == set(moved)
    assert drifts["mean radius"].ks_pvalue is not None and drifts["mean radius"].ks_pvalue < 1e-6
    worst_first = summary(list(drifts.values()), 0.2).splitlines()[1:3]
    assert {line.split("  ")[0].strip() for line in worst_first} == set(moved)


def test_categorical_psi_sees_new_and_vanished_categories() -> None:
    reference = pd.DataFrame({"colour": ["red"] * 50 + ["blue"] * 50})
    profile = build_profile(reference, {"colour": "categorical"})
    same = compare(profile, reference)[0]
    assert same.psi == pytest.approx(0.0, abs=1e-9) and same.ks_pvalue is None
    changed = compare(profile, pd.DataFrame({"colour": ["green"] * 80 + ["red"] * 20}))[0]
    assert changed.drifted(0.2)


def test_psi_is_symmetric_in_form_and_zero_for_equal_vectors() -> None:
    vector = np.array([0.25, 0.25, 0.5])
    assert psi(vector, vector) == pytest.approx(0.0)
    assert psi(vector, vector[::-1]) == pytest.approx(psi(vector[::-1], vector))


def test_inputs_without_profile_features_are_a_clear_error(demo) -> None:
    dataset, parts = demo
    profile = build_profile(parts.X_train, dataset.feature_types)
    with pytest.raises(DriftError, match="none of the profile's features"):
        compare(profile, pd.DataFrame({"unrelated": [1, 2, 3]}))
    with pytest.raises(DriftError, match="no rows"):
        compare(profile, parts.X_train.head(0))


def _normal_profile(rows: int) -> dict:
    reference = pd.DataFrame({"x": np.random.default_rng(0).normal(0.0, 1.0, rows)})
    return build_profile(reference, {"x": "numeric"})


@pytest.mark.parametrize(("reference_rows", "shift"), [(455, 0.25), (5000, 0.15)])
def test_ks_detects_a_small_shift_that_201_quantiles_as_a_sample_missed(
    reference_rows: int, shift: float
) -> None:
    """A small shift on 2,000 rows: the old test (ks_2samp against the 201 stored quantiles)
    answers p = 0.017 and 0.44 here, no drift at KS_ALPHA; against the reference's CDF the
    shift is found, more surely the larger the reference."""
    profile = _normal_profile(reference_rows)
    shifted = pd.DataFrame({"x": np.random.default_rng(7).normal(shift, 1.0, 2000)})
    pvalue = compare(profile, shifted)[0].ks_pvalue
    assert pvalue is not None and pvalue < KS_ALPHA
    quantiles = np.asarray(profile["features"]["x"]["quantiles"])
    assert stats.ks_2samp(shifted["x"].to_numpy(), quantiles).pvalue > KS_ALPHA


def test_ks_stays_quiet_without_a_shift() -> None:
    """Unshifted draws, as many as the reference and 10x more: false alarms at most at the
    test's own rate (0 or 1 of 20 at alpha 0.01), since the reference's own sampling error
    counts (two-sample distribution with the profile's row count)."""
    profile = _normal_profile(1000)
    alarms = 0
    for seed in range(20):
        for rows in (1000, 10_000):
            same = pd.DataFrame({"x": np.random.default_rng(100 + seed).normal(0.0, 1.0, rows)})
            pvalue = compare(profile, same)[0].ks_pvalue
            assert pvalue is not None
            alarms += pvalue < KS_ALPHA
    assert alarms <= 1
