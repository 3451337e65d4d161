"""From class probabilities to a decision: the binary decision threshold, chosen on out-of-fold
predictions, and how every reader of a model applies it.

A binary model decides "positive" when the positive class's probability is at least its
threshold (scikit-learn's `FixedThresholdClassifier` rule, `>=`). The threshold is chosen for a
*decision metric* (F1 or accuracy) on the CV folds' out-of-fold probabilities during the study
(`ml.tuning`), the idea of scikit-learn's `TunedThresholdClassifierCV` without its second round
of cross-validation: the study fits those folds anyway. The refit model is logged wrapped in a
`FixedThresholdClassifier`, so `model.predict` (and so MLflow's pyfunc, the promotion gate and
the holdout metrics) applies it. Models without a threshold, and multiclass models, decide by
the most probable class, as before.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from sklearn.metrics import roc_curve
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline

from ml.config import THRESHOLD_METRICS

# A fitted model as logged: the pipeline, or the pipeline wrapped with its decision threshold.
Classifier: TypeAlias = Pipeline | FixedThresholdClassifier


def choose_threshold(positive: np.ndarray, scores: np.ndarray, metric: str) -> float:
    """The threshold on `scores` (the positive class's probability) that maximises `metric`
    for the true labels `positive` (booleans); positives are `scores >= threshold`.

    Every distinct score is a candidate (exact, from one `roc_curve`); the threshold returned
    is halfway between the best candidate and the next lower score, so unseen rows near the
    boundary are not all decided by one training row. Ties go to the higher threshold.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(
            f"decision metric {metric!r}: a threshold is chosen for {', '.join(THRESHOLD_METRICS)}"
        )
    positive = np.asarray(positive, dtype=bool)
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("choosing a threshold needs both classes among the out-of-fold rows")
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    true_pos, false_pos = tpr * positives, fpr * negatives
    if metric == "f1":
        values = 2 * true_pos / (true_pos + false_pos + positives)
    else:
        values = (true_pos + negatives - false_pos) / len(positive)
    best = int(np.argmax(values))
    upper = min(float(thresholds[best]), 1.0)  # the first candidate is +inf: flag nothing
    lower = float(thresholds[best + 1]) if best + 1 < len(thresholds) else 0.0
    return (upper + lower) / 2


def decide(proba: np.ndarray, labels: np.ndarray, threshold: float | None) -> np.ndarray:
    """Each row's label: the positive class (`labels[1]`) when its probability reaches
    `threshold`; the most probable class when there is no threshold or more than two classes."""
    if threshold is None or proba.shape[1] != 2:
        return labels[proba.argmax(axis=1)]
    return labels[(proba[:, 1] >= threshold).astype(int)]


def with_threshold(model: Pipeline, threshold: float | None) -> Classifier:
    """`model` (unfitted) deciding at `threshold`; itself when there is none."""
    if threshold is None:
        return model
    return FixedThresholdClassifier(model, threshold=threshold, response_method="predict_proba")


def split_threshold(model: Any) -> tuple[Any, float | None]:
    """(the fitted classifier inside, its threshold) of a model `with_threshold` built;
    (model, None) for any other model."""
    if isinstance(model, FixedThresholdClassifier):
        return model.estimator_, float(model.threshold)
    return model, None
