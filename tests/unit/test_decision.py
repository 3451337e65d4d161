"""ml.decision: the threshold chosen for a metric, applied alike by every reader of a model."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import FixedThresholdClassifier, StratifiedKFold

from ml.config import Settings
from ml.data import split, validate
from ml.decision import choose_threshold, decide, split_threshold, with_threshold
from ml.features import build_pipeline
from ml.storage import study_storage
from ml.tuning import THRESHOLD_ATTR, tune
from serving.model import Scored, ServedModel
from tests.unit.serving_support import LOGREG, demo_dataset, fitted, mixed_dataset

METRICS = {"f1": f1_score, "accuracy": accuracy_score}


def test_the_best_f1_threshold_of_a_rare_class_is_found_far_below_half() -> None:
    """Positives score 0.30-0.45, so at 0.5 nothing is flagged (F1 0); flagging every row
    from 0.30 up costs one false positive (0.32) and finds all four: F1 8/9, the best."""
    scores = np.array([0.05, 0.10, 0.15, 0.20, 0.25, 0.32, 0.30, 0.35, 0.40, 0.45])
    positive = np.array([False] * 6 + [True] * 4)
    threshold = choose_threshold(positive, scores, "f1")
    assert threshold == pytest.approx((0.30 + 0.25) / 2)  # halfway to the next lower score
    assert f1_score(positive, scores >= threshold) == pytest.approx(8 / 9)
    assert f1_score(positive, scores >= 0.5) == 0.0


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_threshold_is_as_good_as_any_on_a_fine_grid(metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    positive = rng.random(500) < 0.15
    scores = np.clip(rng.normal(0.25 + 0.25 * positive, 0.15), 0, 1).round(3)  # with ties
    threshold = choose_threshold(positive, scores, metric)
    best = METRICS[metric](positive, scores >= threshold)
    # Every threshold on a grid at once: rows x thresholds of decisions.
    flagged = scores[:, None] >= np.linspace(0, 1, 1001)[None, :]
    true_pos = (flagged & positive[:, None]).sum(axis=0)
    false_pos = (flagged & ~positive[:, None]).sum(axis=0)
    if metric == "f1":
        on_grid = 2 * true_pos / (true_pos + false_pos + positive.sum())
    else:
        on_grid = (true_pos + (~positive).sum() - false_pos) / len(positive)
    assert best >= on_grid.max() - 1e-12
    assert 0.0 <= threshold <= 1.0


def test_only_f1_and_accuracy_choose_a_threshold_and_both_classes_are_needed() -> None:
    scores = np.array([0.1, 0.9])
    with pytest.raises(ValueError, match="decision metric 'recall'"):
        choose_threshold(np.array([False, True]), scores, "recall")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([True, True]), scores, "f1")


def test_decide_flags_the_positive_class_at_the_threshold_else_the_most_probable() -> None:
    labels = np.array(["no", "yes"], dtype=object)
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    assert list(decide(proba, labels, 0.3)) == ["no", "yes", "yes"]  # >=, as scikit-learn
    assert list(decide(proba, labels, None)) == ["no", "no", "no"]
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert list(decide(three, np.array(["a", "b", "c"]), 0.25)) == ["b", "a"]  # argmax


@pytest.mark.parametrize(
    "tuning_metric, decision_metric, decision",
    [
        ("f1", "auto", "f1"),
        ("accuracy", "auto", "accuracy"),
        ("roc_auc", "auto", None),  # threshold-free: decide at 0.5
        ("log_loss", "auto", None),
        ("recall", "auto", None),  # degenerate over a threshold: flag every row
        ("roc_auc", "f1", "f1"),  # rank by ROC AUC, decide for F1
        ("f1", "none", None),  # F1 at 0.5, as before
    ],
)
def test_the_decision_metric_follows_the_tuning_metric_unless_set(
    tuning_metric: str, decision_metric: str, decision: str | None
) -> None:
    settings = Settings(tuning_metric=tuning_metric, decision_metric=decision_metric)
    assert settings.decision == decision


def test_a_decision_metric_outside_the_choices_names_the_field() -> None:
    with pytest.raises(ValueError, match="decision_metric"):
        Settings(decision_metric="roc_auc")


def test_the_wrapped_model_predicts_at_its_threshold_and_unwraps_to_its_pipeline() -> None:
    dataset = mixed_dataset()
    pipeline = build_pipeline(LOGREG, dataset.feature_types, seed=0)
    model = with_threshold(pipeline, 0.2).fit(dataset.X, dataset.y)
    assert isinstance(model, FixedThresholdClassifier)
    inner, threshold = split_threshold(model)
    assert threshold == 0.2 and inner is model.estimator_
    proba = inner.predict_proba(dataset.X)
    assert list(model.predict(dataset.X)) == list(decide(proba, model.classes_, 0.2))
    assert with_threshold(pipeline, None) is pipeline
    assert split_threshold(pipeline) == (pipeline, None)


def test_in_process_and_served_predictions_apply_the_loaded_threshold() -> None:
    """`LoadedModel.predict_frame` and serving's `Scored.labels` decide alike; a version
    without a threshold decides by the most probable class, as before."""
    loaded = fitted(mixed_dataset(), "churn", "1")
    rows = mixed_dataset().X
    proba = loaded.predict_proba(rows)
    low = float(np.quantile(proba[:, 1], 0.3))  # flags most rows, unlike 0.5
    untuned = loaded.predict_frame(rows)["prediction"].tolist()
    assert untuned == list(np.asarray(loaded.classes, dtype=object)[proba.argmax(axis=1)])

    loaded.threshold = low
    expected = list(decide(proba, np.asarray(loaded.classes, dtype=object), low))
    assert expected != untuned
    assert loaded.predict_frame(rows)["prediction"].tolist() == expected
    served = ServedModel.of(loaded)
    assert Scored(served, served.score(rows)).labels == expected


def test_a_binary_study_records_each_trials_threshold_and_scores_it_there(tmp_path) -> None:
    """On an imbalanced table (12% positives) an f1 study chooses each complete trial's
    threshold on its out-of-fold rows; its value is the folds' F1 at that threshold, and the
    best trial's threshold is the result's."""
    X, y = make_classification(  # noqa: N806
        n_samples=400, n_features=6, weights=[0.88], class_sep=0.6, random_state=3
    )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)]).assign(churned=y)
    dataset = validate(frame, "churned", source="frame")
    settings = Settings(
        var_dir=tmp_path, families=["logreg"], tuning_metric="f1", trials=3, timeout_s=None
    )
    data_split = split(dataset, 0.2, 42)
    result = tune(data_split, dataset.feature_types, settings, "f1-study", None)
    study = optuna.load_study(study_name="f1-study", storage=study_storage(settings.optuna_storage))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete and all(THRESHOLD_ATTR in trial.user_attrs for trial in complete)
    assert result.threshold == study.best_trial.user_attrs[THRESHOLD_ATTR]
    assert result.threshold is not None and abs(result.threshold - 0.5) > 0.05

    # The same folds, whole pipelines: the out-of-fold rows choose the same threshold, and
    # the trial's value is the folds' mean F1 there.
    folds = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
    X_train, y_train = data_split.X_train, data_split.y_train  # noqa: N806
    truth, scores, fold_f1 = [], [], []
    pipelines = []
    for train, valid in folds.split(X_train, y_train):
        model = build_pipeline(result.best_params, dataset.feature_types, settings.seed)
        model.fit(X_train.iloc[train], y_train.iloc[train])
        pipelines.append((model.predict_proba(X_train.iloc[valid])[:, 1], y_train.iloc[valid]))
    for proba, labels in pipelines:
        truth.append(np.asarray(labels) == 1)
        scores.append(proba)
    threshold = choose_threshold(np.concatenate(truth), np.concatenate(scores), "f1")
    assert threshold == pytest.approx(result.threshold)
    for proba, labels in pipelines:
        fold_f1.append(f1_score(labels, (proba >= threshold).astype(int)))
    assert result.best_value == pytest.approx(np.mean(fold_f1))


def test_the_numeric_fast_path_applies_the_threshold_too() -> None:
    """All-numeric records are scored as a float matrix without the pipeline's
    ColumnTransformer; their labels follow the threshold all the same."""
    dataset = demo_dataset()
    loaded = fitted(dataset, "demo", "7")  # a fresh copy: the cached one is shared
    rows = dataset.X.head(120)
    proba = loaded.predict_proba(rows)
    loaded.threshold = float(np.quantile(proba[:, 1], 0.5))  # far from 0.5 on this data
    served = ServedModel.of(loaded)
    matrix = served.input_rows(json.loads(rows.to_json(orient="records")))
    assert served.numeric is not None and isinstance(matrix, np.ndarray)
    labels = Scored(served, served.score(matrix)).labels
    expected = list(decide(proba, served.label_array, loaded.threshold))
    assert labels == expected
    assert expected != list(served.label_array[proba.argmax(axis=1)])
