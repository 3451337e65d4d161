"""ml.baselines: an untuned estimator that beats the tuned model on the holdout is kept."""

from __future__ import annotations

import pytest

from ml.baselines import keep_tuned_or_baseline, untuned_params
from ml.data import load_dataset, split
from ml.decision import with_threshold
from ml.evaluation import score
from ml.families import all_families, family
from ml.features import build_pipeline


@pytest.fixture(scope="module")
def demo():
    dataset = load_dataset("demo", None)
    return dataset, split(dataset, 0.2, 42)


def test_untuned_params_are_scikit_learns_defaults_even_outside_the_space() -> None:
    assert untuned_params("logreg") == {"family": "logreg", "C": 1.0, "class_weight": None}
    assert untuned_params("random_forest")["max_depth"] is None  # the space stops at 20
    assert untuned_params("hist_gb")["l2_regularization"] == 0.0  # the space is log-scaled


@pytest.mark.parametrize("name", list(all_families()))
def test_every_familys_untuned_params_build_the_librarys_default_estimator(name: str) -> None:
    """Searched names the estimator calls otherwise (the booster's `hgb_min_samples_leaf`)
    are translated: a KeyError here once failed every regression pipeline's train stage."""
    entry = family(name)
    searched = {k: v for k, v in untuned_params(name).items() if k != "family"}
    estimator = entry.build(searched, 0)
    built, library = estimator.get_params(), type(estimator)().get_params()
    arguments = [entry.argument(key) for key in searched]
    assert {arg: built[arg] for arg in arguments} == {arg: library[arg] for arg in arguments}


def test_a_baseline_that_beats_the_tuned_model_on_the_holdout_is_kept(demo) -> None:
    dataset, data_split = demo
    params = {"family": "logreg", "C": 1.0, "class_weight": None}
    # A threshold no row reaches: the "tuned" model flags nothing, F1 0.
    crippled = with_threshold(build_pipeline(params, dataset.feature_types, 0), 1.0)
    crippled.fit(data_split.X_train, data_split.y_train)
    choice = keep_tuned_or_baseline(crippled, params, ["logreg"], dataset, data_split, "f1", 0.0, 0)
    assert choice.kept == "untuned logreg"
    assert choice.params == untuned_params("logreg")
    assert choice.scores["tuned"] == 0.0
    assert choice.scores["logreg"] == score(
        "f1", choice.model, data_split.X_holdout, data_split.y_holdout
    )
    assert choice.scores["logreg"] > 0.9


def test_a_tie_or_a_win_within_the_margin_keeps_the_tuned_model(demo) -> None:
    dataset, data_split = demo
    tuned = build_pipeline(untuned_params("logreg"), dataset.feature_types, 0)
    tuned.fit(data_split.X_train, data_split.y_train)
    choice = keep_tuned_or_baseline(
        tuned, {"family": "logreg"}, ["logreg"], dataset, data_split, "log_loss", 0.0, 0
    )
    assert choice.kept == "tuned" and choice.model is tuned
    assert choice.scores["logreg"] == pytest.approx(choice.scores["tuned"])
