"""Holdout metrics and plots; one `score` function so tuning, training and the gate agree."""

from __future__ import annotations

from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn import metrics as skm
from sklearn.base import is_regressor
from sklearn.preprocessing import label_binarize

from ml.config import LOWER_IS_BETTER, REGRESSION_METRICS

# Headless: plots are artifacts, never windows. scikit-learn imports pyplot only when plotting.
matplotlib.use("Agg")

ALL_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")


def score(metric: str, model: Any, X: pd.DataFrame, y: pd.Series) -> float:  # noqa: N803
    """One metric of a fitted classifier or regressor on (X, y)."""
    if metric in REGRESSION_METRICS:
        return regression_metrics(y, model.predict(X), only=(metric,))[metric]
    return holdout_metrics(model, X, y, only=(metric,))[metric]


def holdout_metrics(
    model: Any, X: pd.DataFrame, y: pd.Series, only: tuple[str, ...] = ALL_METRICS  # noqa: N803
) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC AUC and log loss (macro-averaged when multiclass);
    for a regressor its `regression_metrics`."""
    if is_regressor(model):
        return regression_metrics(y, model.predict(X))
    classes = list(model.classes_)
    needs_proba = {"roc_auc", "log_loss"} & set(only)
    proba = model.predict_proba(X) if needs_proba else None
    predicted = model.predict(X) if set(only) - {"roc_auc", "log_loss"} else None
    return prediction_metrics(y, predicted, proba, classes, only)


def prediction_metrics(
    y: Any, predicted: Any, proba: Any, classes: list[Any], only: tuple[str, ...] = ALL_METRICS
) -> dict[str, float]:
    """The same metrics from predictions already made (labels, and probabilities in `classes`
    order for roc_auc and log_loss): how live quality is scored from served predictions."""
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    pos_label = classes[1] if binary else 1
    results: dict[str, float] = {}
    for metric in only:
        if metric == "accuracy":
            results[metric] = skm.accuracy_score(y, predicted)
        elif metric in {"precision", "recall", "f1"}:
            scorer = {
                "precision": skm.precision_score,
                "recall": skm.recall_score,
                "f1": skm.f1_score,
            }[metric]
            results[metric] = scorer(
                y, predicted, average=average, pos_label=pos_label, zero_division=0
            )
        elif metric == "roc_auc":
            results[metric] = _roc_auc(y, proba, classes)
        elif metric == "log_loss":
            results[metric] = skm.log_loss(y, proba, labels=classes)
        else:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(ALL_METRICS)}")
    return {name: float(value) for name, value in results.items()}


def regression_metrics(
    y: Any, predicted: Any, only: tuple[str, ...] | None = None
) -> dict[str, float]:
    """RMSE, MAE, R² and, when the target never reaches 0, MAPE (a fraction: 0.1 is 10%).
    MAPE divides by the target: one true 0 makes it infinite, so it is left out then, and
    asking for it is an error."""
    truth = np.asarray(y, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    wanted = only or tuple(m for m in REGRESSION_METRICS if m != "mape" or (truth != 0).all())
    results: dict[str, float] = {}
    for metric in wanted:
        if metric == "rmse":
            results[metric] = skm.root_mean_squared_error(truth, predicted)
        elif metric == "mae":
            results[metric] = skm.mean_absolute_error(truth, predicted)
        elif metric == "r2":
            results[metric] = skm.r2_score(truth, predicted)
        elif metric == "mape":
            if (truth == 0).any():
                raise ValueError("MAPE is undefined: the target is 0 on some rows; use mae")
            results[metric] = skm.mean_absolute_percentage_error(truth, predicted)
        else:
            raise ValueError(
                f"unknown metric {metric!r}; regression metrics: {', '.join(REGRESSION_METRICS)}"
            )
    return {name: float(value) for name, value in results.items()}


def _roc_auc(y: pd.Series, proba: Any, classes: list[Any]) -> float:
    if len(classes) == 2:
        return binary_roc_auc(np.asarray(y) == classes[1], proba[:, 1])
    return float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def binary_roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance that a positive outscores a negative,
    ties counting half, from the positives' average ranks. The same number as scikit-learn's
    `roc_auc_score`, which spends 2 ms per call checking its inputs: a tuning trial scores
    every CV fold, and on the bundled data that was a tenth of a trial.
    """
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC is undefined when y holds only one class")
    rank_sum = float(rankdata(scores)[positive].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def is_better(metric: str, candidate: float, incumbent: float, margin: float = 0.0) -> bool:
    """True when `candidate` beats `incumbent` by more than `margin` in the metric's direction."""
    if metric in LOWER_IS_BETTER:
        return candidate < incumbent - margin
    return candidate > incumbent + margin


def direction(metric: str) -> Literal["minimize", "maximize"]:
    """Optuna's study direction for a metric."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def confusion_matrix_figure(model: Any, X: pd.DataFrame, y: pd.Series) -> Figure:  # noqa: N803
    """Counts of true vs predicted labels on the holdout."""
    return confusion_matrix_plot(y, model.predict(X), list(model.classes_), "Holdout")


def confusion_matrix_plot(y: Any, predicted: Any, classes: list[Any], title: str) -> Figure:
    """Counts of true vs predicted labels, classes in the model's order."""
    display = skm.ConfusionMatrixDisplay.from_predictions(
        y, predicted, labels=classes, colorbar=False
    )
    display.ax_.set_title(f"{title} confusion matrix")
    return display.figure_


def roc_curve_figure(model: Any, X: pd.DataFrame, y: pd.Series) -> Figure:  # noqa: N803
    """ROC per class (one-vs-rest), which is the plain ROC curve when binary."""
    return roc_plot(y, model.predict_proba(X), list(model.classes_), "Holdout")


def roc_plot(y: Any, proba: np.ndarray, classes: list[Any], title: str) -> Figure:
    """ROC per class (one-vs-rest) from probabilities in `classes` order; a class absent
    from `y` has no curve."""
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    targets = [classes[1]] if len(classes) == 2 else classes
    truth = label_binarize(y, classes=classes) if len(classes) > 2 else None
    for index, label in enumerate(targets):
        column = 1 if len(classes) == 2 else index
        positives = (np.asarray(y) == label) if truth is None else truth[:, index]
        if positives.all() or not positives.any():
            continue
        skm.RocCurveDisplay.from_predictions(positives, proba[:, column], name=str(label), ax=axes)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set_title(f"{title} ROC")
    return figure


def regression_figures(
    model: Any, X: pd.DataFrame, y: pd.Series  # noqa: N803
) -> dict[str, Figure]:
    """Residuals against predictions, and predictions against the truth, on the holdout:
    where a regressor is off, and whether its errors grow with the value."""
    return regression_plots(y, model.predict(X), "Holdout")


def regression_plots(y: Any, predicted: Any, title: str) -> dict[str, Figure]:
    """`regression_figures` from values already predicted (`mlops evaluate`)."""
    predicted = np.asarray(predicted, dtype=float)
    figures: dict[str, Figure] = {}
    for name, kind, heading in (
        ("residuals", "residual_vs_predicted", f"{title} residuals"),
        ("predicted_vs_actual", "actual_vs_predicted", f"{title} predicted vs actual"),
    ):
        figure = Figure(figsize=(5, 4))
        axes = figure.add_subplot()
        skm.PredictionErrorDisplay.from_predictions(
            np.asarray(y, dtype=float), predicted, kind=kind, ax=axes, subsample=None
        )
        axes.set_title(heading)
        figures[name] = figure
    return figures
