"""The AutoML benchmark's own code, without FLAML or a race: scoring of predictions, medians
over seeds, issue 23's two targets (direction-aware), and the split files both sides read
(benchmarks/automl_report.py, benchmarks/automl.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.automl import DATASETS, scores_of, write_split
from benchmarks.automl_report import (
    FLAML_ALL,
    FLAML_OURS,
    OURS,
    Score,
    holdout_scores,
    medians,
    relative_gap,
    verdicts,
)


def test_classification_scores_rank_by_proba_and_decide_by_label() -> None:
    y_true = pd.Series([0, 0, 1, 1, 1])
    predictions = pd.DataFrame({"prediction": [0, 1, 1, 1, 0], "proba": [0.1, 0.6, 0.7, 0.8, 0.4]})
    scores = holdout_scores("classification", y_true, predictions)
    # pairs (neg, pos) ranked right: 0.1 below all 3 positives, 0.6 below 0.7 and 0.8 only
    assert scores["roc_auc"] == pytest.approx(5 / 6)
    # tp 2, fp 1, fn 1
    assert scores["f1"] == pytest.approx(2 / 3)


def test_regression_scores() -> None:
    y_true = pd.Series([1.0, 2.0, 3.0, 4.0])
    scores = holdout_scores("regression", y_true, pd.DataFrame({"prediction": [1, 2, 3, 6]}))
    assert scores["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert scores["r2"] == pytest.approx(1 - 4 / 5)


def test_classification_without_probabilities_is_refused() -> None:
    with pytest.raises(ValueError, match="proba"):
        holdout_scores("classification", pd.Series([0, 1]), pd.DataFrame({"prediction": [0, 1]}))


def seeded_scores(dataset: str, metric: str, values: dict[str, list[float]]) -> list[Score]:
    return [
        Score(dataset, seed, contender, metric, value)
        for contender, seeded in values.items()
        for seed, value in enumerate(seeded)
    ]


def test_medians_are_over_seeds_per_dataset_contender_and_metric() -> None:
    found = medians(seeded_scores("a", "roc_auc", {OURS: [0.9, 0.7, 0.8], FLAML_ALL: [0.5, 0.6]}))
    assert found == {("a", OURS, "roc_auc"): 0.8, ("a", FLAML_ALL, "roc_auc"): 0.55}


def test_targets_higher_is_better() -> None:
    scores = seeded_scores(
        "cls", "roc_auc", {OURS: [0.900, 0.910], FLAML_OURS: [0.900, 0.900], FLAML_ALL: [0.911]}
    )
    (verdict,) = verdicts(medians(scores), {"cls": "classification"})
    assert verdict.beats_restricted  # 0.905 >= 0.900
    assert not verdict.near_unrestricted  # 0.905 < 0.911 * 0.995 = 0.90645
    assert verdict.gap_to_unrestricted == pytest.approx((0.911 - 0.905) / 0.911)


def test_targets_missed_when_ours_is_worse() -> None:
    scores = seeded_scores("cls", "roc_auc", {OURS: [0.90], FLAML_OURS: [0.91], FLAML_ALL: [0.95]})
    (verdict,) = verdicts(medians(scores), {"cls": "classification"})
    assert not verdict.beats_restricted
    assert not verdict.near_unrestricted  # 0.90 < 0.95 * 0.995


def test_targets_lower_is_better_for_rmse() -> None:
    scores = seeded_scores("reg", "rmse", {OURS: [10.0], FLAML_OURS: [10.2], FLAML_ALL: [9.96]})
    (verdict,) = verdicts(medians(scores), {"reg": "regression"})
    assert verdict.beats_restricted  # 10.0 <= 10.2
    assert verdict.near_unrestricted  # 10.0 <= 9.96 * 1.005 = 10.0098
    assert not verdicts(
        medians(
            seeded_scores("reg", "rmse", {OURS: [10.1], FLAML_OURS: [10.0], FLAML_ALL: [10.0]})
        ),
        {"reg": "regression"},
    )[0].near_unrestricted
    assert relative_gap("rmse", 9.0, 10.0) == pytest.approx(-0.1)  # ours better: negative


def test_a_dataset_missing_a_contender_gets_no_verdict() -> None:
    scores = seeded_scores("cls", "roc_auc", {OURS: [0.9], FLAML_OURS: [0.9]})
    assert verdicts(medians(scores), {"cls": "classification"}) == []


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda dataset: dataset.name)
def test_split_files_hold_every_row_once_and_the_target(dataset, tmp_path: Path) -> None:
    train_path, test_path = write_split(dataset, 1, tmp_path)
    train, test = pd.read_parquet(train_path), pd.read_parquet(test_path)
    assert len(test) == pytest.approx(0.2 * (len(train) + len(test)), abs=1)
    assert dataset.target in train and list(train.columns) == list(test.columns)
    if dataset.task == "classification":
        # stratified: the holdout's positive share is the training rows'
        assert math.isclose(train[dataset.target].mean(), test[dataset.target].mean(), abs_tol=0.02)
    else:
        assert np.issubdtype(train[dataset.target].dtype, np.floating)


def test_a_saved_run_gives_back_its_scores() -> None:
    runs: list[dict[str, object]] = [
        {"dataset": "a", "seed": 0, "contender": OURS, "best": "logreg", "roc_auc": 0.9, "f1": 0.5},
        {"dataset": "b", "seed": 1, "contender": FLAML_ALL, "best": "lgbm", "rmse": 3.0, "r2": 0.1},
    ]
    assert sorted(scores_of(runs), key=lambda score: score.metric) == [
        Score("a", 0, OURS, "f1", 0.5),
        Score("b", 1, FLAML_ALL, "r2", 0.1),
        Score("b", 1, FLAML_ALL, "rmse", 3.0),
        Score("a", 0, OURS, "roc_auc", 0.9),
    ]
