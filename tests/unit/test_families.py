"""ml.families: each model family is one entry, and every entry is complete and usable."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import ValidationError
from sklearn.base import ClassifierMixin, is_classifier

from ml.config import Settings
from ml.families import FAMILIES, UnknownFamilyError, family

# The search spaces as they were when the table was introduced: a change here changes which
# models a study can find, and so its results for a given seed.
SEARCH_SPACES = {
    "logreg": {"C": FloatDistribution(1e-3, 1e2, log=True)},
    "random_forest": {
        "n_estimators": IntDistribution(50, 300, step=25),
        "max_depth": IntDistribution(2, 20),
        "min_samples_leaf": IntDistribution(1, 10),
        "max_features": CategoricalDistribution(["sqrt", "log2"]),
    },
    "hist_gb": {
        "learning_rate": FloatDistribution(0.01, 0.3, log=True),
        "max_iter": IntDistribution(50, 300, step=25),
        "max_leaf_nodes": IntDistribution(7, 63),
        "l2_regularization": FloatDistribution(1e-6, 1.0, log=True),
    },
}


def sampled(name: str, seed: int = 0) -> tuple[dict, optuna.Trial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return family(name).search_space(trial), trial


def test_the_table_is_keyed_by_each_entrys_name_in_the_default_order() -> None:
    assert list(FAMILIES) == ["logreg", "random_forest", "hist_gb"]
    assert all(name == entry.name for name, entry in FAMILIES.items())
    assert Settings().families == list(FAMILIES)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_search_space_is_unchanged(name: str) -> None:
    params, trial = sampled(name)
    assert trial.distributions == SEARCH_SPACES[name]
    assert set(params) == set(SEARCH_SPACES[name])


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sampled_trial_builds_a_seeded_classifier_with_those_params(name: str, seed: int) -> None:
    params, _ = sampled(name, seed)
    estimator = family(name).build(params, seed)
    assert is_classifier(estimator) and isinstance(estimator, ClassifierMixin)
    assert estimator.get_params()["random_state"] == seed
    assert params.items() <= estimator.get_params().items()


@pytest.mark.parametrize("name", [name for name, entry in FAMILIES.items() if entry.cheap_defaults])
def test_cheap_defaults_build_and_lie_inside_the_search_space(name: str) -> None:
    """They are queued as trials: a value outside the space would be a different study."""
    defaults = family(name).cheap_defaults
    assert defaults is not None
    assert is_classifier(family(name).build(defaults, 0))
    study = optuna.create_study()
    study.enqueue_trial(defaults)
    params = family(name).search_space(study.ask())
    assert params == defaults


def test_only_the_forest_has_no_cheap_defaults() -> None:
    assert [name for name, entry in FAMILIES.items() if entry.cheap_defaults is None] == [
        "random_forest"
    ]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_names_its_skops_trusted_types(name: str) -> None:
    trusted = family(name).skops_trusted_types
    assert isinstance(trusted, tuple) and "numpy.dtype" in trusted


def test_an_unknown_family_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UnknownFamilyError) as refused:
        family("xgboost")
    assert isinstance(refused.value, ValueError)
    assert str(refused.value) == (
        "unknown model family 'xgboost'; known families: logreg, random_forest, hist_gb"
    )


@pytest.mark.parametrize("given", ["xgboost", "logreg,xgboost", '["hist_gb", "xgboost"]'])
def test_settings_refuse_an_unknown_family_naming_it_and_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("MLOPS_FAMILIES", given)
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "families" in message and "'xgboost'" in message
    assert "known families: logreg, random_forest, hist_gb" in message


def test_settings_accept_known_families_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOPS_FAMILIES", "hist_gb, logreg")
    assert Settings().families == ["hist_gb", "logreg"]
