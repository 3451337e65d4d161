"""The training benchmark's random-search baseline searches our families' space
(benchmarks/training.py): the same hyperparameters, every draw inside our ranges, so the race
compares two ways of searching one space, not two spaces."""

from __future__ import annotations

import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, json_to_distribution
from sklearn.model_selection import ParameterSampler

from benchmarks.training import random_search_space
from ml.families import FAMILIES, ModelFamily
from ml.study import space_definition

DRAWS = 300


def our_distributions(entry: ModelFamily) -> dict[str, BaseDistribution]:
    """The family's space as the study identity traces it, keyed by the estimator's argument
    names."""
    traced = space_definition(entry)["distributions"]
    return {entry.argument(name): json_to_distribution(text) for name, text in traced.items()}


def the_family_of(sub_space: dict) -> ModelFamily:
    estimator_type = type(sub_space["model"][0])
    return next(
        e for e in FAMILIES.values() if type(e.build(e.cheap_defaults, 0)) is estimator_type
    )


@pytest.mark.parametrize("index", range(len(FAMILIES)))
def test_each_baseline_sub_space_draws_inside_its_familys_space(index: int) -> None:
    sub_space = random_search_space(seed=0)[index]
    ours = our_distributions(the_family_of(sub_space))
    names = {key.removeprefix("model__") for key in sub_space if key != "model"}
    assert names == set(ours)
    for drawn in ParameterSampler(sub_space, DRAWS, random_state=0):
        for key, value in drawn.items():
            if key == "model":
                continue
            distribution = ours[key.removeprefix("model__")]
            if isinstance(distribution, CategoricalDistribution):
                assert value in distribution.choices, (key, value)
            else:
                assert distribution.low <= value <= distribution.high, (key, value)


def test_every_family_has_a_baseline_sub_space() -> None:
    families = {the_family_of(sub_space).name for sub_space in random_search_space(seed=0)}
    assert families == set(FAMILIES)
