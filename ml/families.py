"""The model families the study searches: one `ModelFamily` entry each, in `FAMILIES`.

An entry holds everything the chain needs to know about its family: the Optuna search space,
the estimator it builds, the cheap defaults queued as the study's first trials, whether its
numeric columns are scaled, and the types skops must trust to load it. Adding a family is one
entry here; `ml.config` accepts its name in `MLOPS_FAMILIES`, tuning searches it, training
registers it.

scikit-learn is imported inside the constructors: `ml.config` validates family names against
this table, and every `mlops` command reads its settings before it knows whether it will fit
anything (importing scikit-learn costs seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from ml.common.tasks import CLASSIFICATION, REGRESSION

if TYPE_CHECKING:
    import optuna
    from sklearn.base import BaseEstimator

Params = dict[str, Any]  # a family's hyperparameters, without the "family" key


@dataclass(frozen=True)
class ModelFamily:
    """One model family: how the study samples it, builds it, starts it and stores it."""

    name: str
    search_space: Callable[[optuna.Trial], Params]  # one trial's sampled hyperparameters
    build: Callable[[Params, int], BaseEstimator]  # (hyperparameters, seed) -> estimator
    # The library's defaults, queued as the study's first trials; None for a family too
    # expensive to try unasked.
    cheap_defaults: Params | None
    # skops refuses to load types it does not trust; these are the ones this family's fitted
    # pipeline needs beyond skops' defaults. Kept explicit and minimal: tests/unit/
    # test_features.py checks they equal what skops reports for a fitted pipeline.
    skops_trusted_types: tuple[str, ...]
    scale_numeric: bool = True  # StandardScaler after imputing numeric columns
    task: str = CLASSIFICATION  # what its estimator predicts: classes, or a number
    # Searched names that are not the estimator's argument names (search name -> argument).
    # Names are study-wide: Optuna refuses one name on two scales, and TPE pools what it
    # learns about a name across families, so a family whose parameter is not another
    # family's (its range or scale differ) searches it under its own name.
    renamed: Mapping[str, str] = field(default_factory=dict)

    def argument(self, searched: str) -> str:
        """The estimator's argument for a searched hyperparameter's name."""
        return self.renamed.get(searched, searched)


class UnknownFamilyError(ValueError):
    """A family name not in `FAMILIES` (a setting or a stored trial the user can get wrong)."""

    def __init__(self, name: object) -> None:
        super().__init__(
            f"unknown model family {name!r}; known families: {', '.join(all_families())}"
        )


# --- logistic regression ---------------------------------------------------------------


def _class_weight(trial: optuna.Trial) -> str | None:
    """None (every row counts once) or "balanced" (each class weighs as much in total): on a
    table with few positives the second often finds them better, at every family's cost of
    nothing. scikit-learn's default, None, is the first choice."""
    return cast(str | None, trial.suggest_categorical("class_weight", [None, "balanced"]))


def _logreg_space(trial: optuna.Trial) -> Params:
    return {
        "C": trial.suggest_float("C", 1e-3, 1e2, log=True),
        "class_weight": _class_weight(trial),
    }


def _logreg(params: Params, seed: int) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=params["C"],
        class_weight=params.get("class_weight"),
        max_iter=2000,
        random_state=seed,
    )


# --- random forest -----------------------------------------------------------------------


def _forest_space(trial: optuna.Trial, max_features: list[str | float]) -> Params:
    """A forest's space for either task; only the `max_features` choices differ."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300, step=25),
        "max_depth": trial.suggest_int("max_depth", 2, 20),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 10),
        "max_features": trial.suggest_categorical("max_features", max_features),
    }


def _forest_arguments(params: Params, seed: int) -> Params:
    return {
        "n_estimators": params["n_estimators"],
        "max_depth": params["max_depth"],
        "min_samples_leaf": params["min_samples_leaf"],
        "max_features": params["max_features"],
        "n_jobs": 1,  # parallelism is across trials, not inside one
        "random_state": seed,
    }


def _random_forest_space(trial: optuna.Trial) -> Params:
    return {**_forest_space(trial, ["sqrt", "log2"]), "class_weight": _class_weight(trial)}


def _random_forest(params: Params, seed: int) -> BaseEstimator:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        **_forest_arguments(params, seed), class_weight=params.get("class_weight")
    )


# --- histogram gradient boosting ---------------------------------------------------------

# the booster's `min_samples_leaf`, named apart from the forest's (1-10, linear)
HGB_MIN_SAMPLES_LEAF = "hgb_min_samples_leaf"


def _boosting_space(trial: optuna.Trial) -> Params:
    """Histogram gradient boosting's space, the same for both tasks."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "max_iter": trial.suggest_int("max_iter", 50, 600, step=25),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 4, 63, log=True),
        HGB_MIN_SAMPLES_LEAF: trial.suggest_int(HGB_MIN_SAMPLES_LEAF, 2, 128, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
    }


def _boosting_arguments(params: Params, seed: int) -> Params:
    return {
        "learning_rate": params["learning_rate"],
        "max_iter": params["max_iter"],
        "max_leaf_nodes": params["max_leaf_nodes"],
        "min_samples_leaf": params[HGB_MIN_SAMPLES_LEAF],
        "l2_regularization": params["l2_regularization"],
        "early_stopping": False,
        "random_state": seed,
    }


def _hist_gb_space(trial: optuna.Trial) -> Params:
    return {**_boosting_space(trial), "class_weight": _class_weight(trial)}


def _hist_gb(params: Params, seed: int) -> BaseEstimator:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        **_boosting_arguments(params, seed), class_weight=params.get("class_weight")
    )


# --- regression: ridge, random forest, histogram gradient boosting ------------------------
# A numeric target's families. The search may also fit them on log1p(target) (`LOG_TARGET`,
# `ml.features.build_estimator`): a skewed quantity such as a price or a duration is often
# easier to fit in logs.


def _ridge_space(trial: optuna.Trial) -> Params:
    return {"alpha": trial.suggest_float("alpha", 1e-3, 1e3, log=True)}


def _ridge(params: Params, seed: int) -> BaseEstimator:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=params["alpha"], random_state=seed)


def _random_forest_regressor_space(trial: optuna.Trial) -> Params:
    # 1.0 (every feature at each split) is scikit-learn's default for regression
    return _forest_space(trial, [1.0, "sqrt", 0.5])


def _random_forest_regressor(params: Params, seed: int) -> BaseEstimator:
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(**_forest_arguments(params, seed))


def _hist_gb_regressor(params: Params, seed: int) -> BaseEstimator:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(**_boosting_arguments(params, seed))


# The search's choice of a log1p target (a regression family's parameter when the target is
# above -1). skops trusts scikit-learn's `TransformedTargetRegressor` and numpy's ufuncs
# already: the log target adds no trusted type (tests/unit/test_regression.py checks it).
LOG_TARGET = "log_target"


# --- the table -----------------------------------------------------------------------------

# The classification families, in the order the study offers them (the default
# `MLOPS_FAMILIES`) and queues their defaults.
FAMILIES: Mapping[str, ModelFamily] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            ModelFamily(
                name="logreg",
                search_space=_logreg_space,
                build=_logreg,
                cheap_defaults={"C": 1.0, "class_weight": None},
                skops_trusted_types=("numpy.dtype",),
            ),
            ModelFamily(
                name="random_forest",
                search_space=_random_forest_space,
                build=_random_forest,
                # scikit-learn's default but for the depth: unlimited is outside the space, and
                # 20 levels hold a million leaves. On 50,000 rows it costs as much as ten
                # trials of the other families; the fold-gap pruner stops it after one fold
                # when it is clearly behind, and an untuned forest is the baseline a user
                # compares with first (issue 23).
                cheap_defaults={
                    "n_estimators": 100,
                    "max_depth": 20,
                    "min_samples_leaf": 1,
                    "max_features": "sqrt",
                    "class_weight": None,
                },
                skops_trusted_types=("numpy.dtype", "sklearn.tree._tree.Tree"),
            ),
            ModelFamily(
                name="hist_gb",
                search_space=_hist_gb_space,
                build=_hist_gb,
                cheap_defaults={
                    "learning_rate": 0.1,
                    "max_iter": 100,
                    "max_leaf_nodes": 31,
                    HGB_MIN_SAMPLES_LEAF: 20,
                    # scikit-learn's 0.0, at the floor of the log-scaled range
                    "l2_regularization": 1e-6,
                    "class_weight": None,
                },
                renamed={HGB_MIN_SAMPLES_LEAF: "min_samples_leaf"},
                skops_trusted_types=(
                    "numpy.dtype",
                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                ),
            ),
        )
    }
)


# The regression families, in the order a regression study offers them.
REGRESSION_FAMILIES: Mapping[str, ModelFamily] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            ModelFamily(
                name="ridge",
                search_space=_ridge_space,
                build=_ridge,
                cheap_defaults={"alpha": 1.0},
                skops_trusted_types=("numpy.dtype",),
                task=REGRESSION,
            ),
            ModelFamily(
                name="random_forest_regressor",
                search_space=_random_forest_regressor_space,
                build=_random_forest_regressor,
                # the depth capped as for the classifier forest: unlimited is outside the space
                cheap_defaults={
                    "n_estimators": 100,
                    "max_depth": 20,
                    "min_samples_leaf": 1,
                    "max_features": 1.0,
                },
                skops_trusted_types=("numpy.dtype", "sklearn.tree._tree.Tree"),
                task=REGRESSION,
            ),
            ModelFamily(
                name="hist_gb_regressor",
                search_space=_boosting_space,
                build=_hist_gb_regressor,
                cheap_defaults={
                    "learning_rate": 0.1,
                    "max_iter": 100,
                    "max_leaf_nodes": 31,
                    HGB_MIN_SAMPLES_LEAF: 20,
                    "l2_regularization": 1e-6,
                },
                renamed={HGB_MIN_SAMPLES_LEAF: "min_samples_leaf"},
                skops_trusted_types=(
                    "numpy.dtype",
                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                ),
                task=REGRESSION,
            ),
        )
    }
)


def all_families() -> dict[str, ModelFamily]:
    """Every family by name, classification's first: `MLOPS_FAMILIES` takes any of them
    (`Settings.for_task` checks they fit the task). Read from the tables at each call."""
    return {**FAMILIES, **REGRESSION_FAMILIES}


def families_for(task: str) -> Mapping[str, ModelFamily]:
    """The families that fit a target of `task`, in the order the study offers them."""
    return REGRESSION_FAMILIES if task == REGRESSION else FAMILIES


def family(name: str) -> ModelFamily:
    """The table's entry for `name`; `UnknownFamilyError` names the known ones."""
    try:
        return all_families()[name]
    except KeyError:
        raise UnknownFamilyError(name) from None
