"""Score a labelled file with a registered version (`mlops evaluate`): the metrics training
reports on its holdout, the confusion matrix, and the same two plots, for data a user has.

The rows go through the version as serving scores them (`LoadedModel.predict_proba`: the
model's own coercion, labels as the most probable class), and the target column is read as
training read it (`ml.data.normalise_target`), so TRUE/FALSE text meets boolean classes.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from sklearn.metrics import confusion_matrix

from ml.common.values import plain, some
from ml.data import DataError, load_frame, normalise_target
from ml.evaluation import (
    ALL_METRICS,
    confusion_matrix_plot,
    prediction_metrics,
    regression_metrics,
    regression_plots,
    roc_plot,
)
from ml.predict import LoadedModel


@dataclass(frozen=True)
class Evaluation:
    """One version's scores on one labelled file."""

    source: str
    target: str
    rows: int
    classes: list[Any]
    metrics: dict[str, float]  # NaN where the file cannot give the metric (see `notes`)
    notes: dict[str, str]  # why a metric is NaN
    confusion: np.ndarray  # rows: true class, columns: predicted class, in `classes` order
    plots: dict[str, Path]

    def as_json(self) -> dict[str, Any]:
        """What `metrics.json` beside the plots holds."""
        return {
            "source": self.source,
            "target": self.target,
            "rows": self.rows,
            "classes": [plain(label) for label in self.classes],
            "metrics": {
                name: None if math.isnan(value) else value for name, value in self.metrics.items()
            },
            "notes": self.notes,
            "confusion_matrix": self.confusion.tolist(),
        }


def labelled_rows(path: Path, model: LoadedModel, target: str | None) -> tuple[pd.DataFrame, str]:
    """(the file's rows that have a label, the target column); DataError names the file and
    the column when the file has no labels to score against."""
    frame = load_frame(str(path))
    column = model.target or target
    if not column:
        raise DataError(
            f"{path}: {model.uri} records no target column; name it (--target / MLOPS_TARGET)"
        )
    if column not in frame.columns:
        names = [str(name) for name in frame.columns]
        close = difflib.get_close_matches(column, names, n=3)
        hint = f"; closest: {some(close)}" if close else ""
        raise DataError(
            f"{path}: target column {column!r} not found (columns are {some(names, limit=6)}"
            f"{hint}); evaluate needs labelled rows, `mlops predict` scores unlabelled ones"
        )
    labelled = frame[frame[column].notna()].reset_index(drop=True)
    if labelled.empty:
        raise DataError(f"{path}: target column {column!r} has no values to score against")
    return labelled, column


def evaluate_file(
    path: Path, model: LoadedModel, target: str | None, reports_dir: Path
) -> Evaluation:
    """Score `path`'s labelled rows with `model`; write both plots and metrics.json under
    `reports_dir`."""
    labelled, column = labelled_rows(path, model, target)
    features, _ = model.without_target(labelled, column)
    if model.is_regressor:
        return _evaluate_values(path, model, labelled[column], features, reports_dir)
    truth = _truth(labelled[column], model, path, column)
    proba = model.predict_proba(features)
    classes = list(model.classes)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    metrics, notes = _metrics(truth, predicted, proba, classes)
    plots = _write_plots(truth, predicted, proba, classes, reports_dir, model)
    evaluation = Evaluation(
        source=str(path),
        target=column,
        rows=len(labelled),
        classes=classes,
        metrics=metrics,
        notes=notes,
        confusion=confusion_matrix(truth, predicted, labels=classes),
        plots=plots,
    )
    (reports_dir / "metrics.json").write_text(json.dumps(evaluation.as_json(), indent=2))
    return evaluation


def _evaluate_values(
    path: Path, model: LoadedModel, target: pd.Series, features: pd.DataFrame, reports_dir: Path
) -> Evaluation:
    """A regressor's RMSE, MAE, R² (and MAPE when no true value is 0) on the file, and its
    residual and predicted-vs-actual plots; no classes, an empty confusion matrix."""
    truth = pd.to_numeric(target, errors="coerce")
    text = target[truth.isna()]
    if not text.empty:
        raise DataError(
            f"{path}: target column {target.name!r} must be numeric for {model.uri} (a "
            f"regressor), got {some(list(text.unique()))}"
        )
    predicted = model.predict_values(features)
    reports_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name, figure in regression_plots(
        truth, predicted, f"{model.name} v{model.version}"
    ).items():
        plots[name] = reports_dir / f"{name}.png"
        figure.savefig(plots[name], bbox_inches="tight")
        plt.close(figure)
    evaluation = Evaluation(
        source=str(path),
        target=str(target.name),
        rows=len(truth),
        classes=[],
        metrics=regression_metrics(truth, predicted),
        notes={},
        confusion=np.zeros((0, 0), dtype=int),
        plots=plots,
    )
    (reports_dir / "metrics.json").write_text(json.dumps(evaluation.as_json(), indent=2))
    return evaluation


def _truth(values: pd.Series, model: LoadedModel, path: Path, column: str) -> np.ndarray:
    """The labels as training read them; a label the model cannot predict is the user's
    error (a wrong column, another encoding of the classes), not a score of zero."""
    truth = normalise_target(values).to_numpy()
    known = set(model.classes)
    unknown = sorted({plain(label) for label in truth if label not in known}, key=str)
    if unknown:
        raise DataError(
            f"{path}: target column {column!r} holds labels {model.uri} never predicts: "
            f"{some(unknown)}; its classes are {some(list(model.classes), limit=10)}"
        )
    return truth


def _metrics(
    truth: np.ndarray, predicted: np.ndarray, proba: np.ndarray, classes: list[Any]
) -> tuple[dict[str, float], dict[str, str]]:
    """Every metric training reports; one the file cannot give (ROC AUC when a class is
    absent) is NaN with the reason, the others still count."""
    metrics: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name in ALL_METRICS:
        try:
            metrics.update(prediction_metrics(truth, predicted, proba, classes, only=(name,)))
        except ValueError as exc:
            metrics[name] = math.nan
            notes[name] = str(exc).splitlines()[0]
    return metrics, notes


def _write_plots(
    truth: np.ndarray,
    predicted: np.ndarray,
    proba: np.ndarray,
    classes: list[Any],
    reports_dir: Path,
    model: LoadedModel,
) -> dict[str, Path]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    title = f"{model.name} v{model.version}"
    written = {}
    for name, figure in (
        ("confusion_matrix", confusion_matrix_plot(truth, predicted, classes, title)),
        ("roc_curve", roc_plot(truth, proba, classes, title)),
    ):
        destination = reports_dir / f"{name}.png"
        figure.savefig(destination, bbox_inches="tight")
        plt.close(figure)
        written[name] = destination
    return written
