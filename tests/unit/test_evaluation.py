"""ml.evaluation: metric directions and multiclass metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ml.evaluation import binary_roc_auc, direction, holdout_metrics, is_better, roc_curve_figure


def test_direction_and_margin() -> None:
    assert direction("roc_auc") == "maximize" and direction("log_loss") == "minimize"
    assert is_better("roc_auc", 0.95, 0.94) and not is_better("roc_auc", 0.95, 0.94, margin=0.02)
    assert is_better("log_loss", 0.20, 0.30) and not is_better("log_loss", 0.30, 0.20)
    assert not is_better("accuracy", 0.9, 0.9)  # a tie keeps the champion


@pytest.mark.parametrize("rows", [2, 7, 91, 1000])
def test_binary_roc_auc_matches_scikit_learn_with_ties(rows) -> None:
    rng = np.random.default_rng(rows)
    for _ in range(20):
        positive = rng.random(rows) < 0.4
        positive[:2] = [True, False]  # both classes, always
        scores = np.round(rng.random(rows), 1)  # coarse: many ties, within and across classes
        assert binary_roc_auc(positive, scores) == pytest.approx(
            roc_auc_score(positive, scores), abs=1e-12
        )


def test_binary_roc_auc_refuses_one_class() -> None:
    with pytest.raises(ValueError, match="only one class"):
        binary_roc_auc(np.array([True, True]), np.array([0.2, 0.9]))


def test_multiclass_metrics_and_roc_plot() -> None:
    X = pd.DataFrame({"a": [0, 1, 2, 3, 4, 5, 6, 7, 8] * 4, "b": [1, 0, 1, 0, 1, 0, 1, 0, 1] * 4})
    y = pd.Series(["x", "y", "z"] * 12)
    model = LogisticRegression(max_iter=500).fit(X, y)
    metrics = holdout_metrics(model, X, y)
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert all(0.0 <= metrics[name] <= 1.0 for name in ("accuracy", "f1", "roc_auc"))
    figure = roc_curve_figure(model, X, y)
    assert len(figure.axes[0].lines) >= 3  # one curve per class plus the chance line
