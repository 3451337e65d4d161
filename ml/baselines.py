"""The untuned baselines a tuned model must not lose to on the holdout (issue 23).

The study already tries each family's scikit-learn defaults as its first trials, so CV can
prefer them; but CV on a few hundred rows is noisy, and a tuned model that ranked first there
could still score below `RandomForestClassifier()` on the holdout a user checks it against.
So after the refit, each configured family's untuned estimator (scikit-learn's defaults for
every searched hyperparameter, at the usual 0.5 decision) is fitted on the same training rows
and scored on the same holdout with the promotion metric; one that beats the tuned model by
more than the promotion margin is registered instead. This is the promotion gate's rule
(scores on the holdout, a clear win needed) applied to the baselines before the gate runs;
like the gate, it makes the holdout a selection set among a handful of candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml.data import Dataset, Split
from ml.decision import Classifier
from ml.evaluation import direction, is_better, score
from ml.families import family
from ml.features import build_pipeline


def untuned_params(name: str) -> dict[str, Any]:
    """The family's searched hyperparameters at scikit-learn's defaults (outside the search
    space where the library's default is: an unlimited forest depth, no L2 penalty)."""
    entry = family(name)
    searched = entry.cheap_defaults or {}
    library = type(entry.build(searched, 0))().get_params()
    return {"family": name, **{key: library[entry.argument(key)] for key in searched}}


@dataclass(frozen=True)
class Choice:
    """The model to register and why: the tuned one, or an untuned baseline that beat it."""

    model: Classifier
    params: dict[str, Any]
    kept: str  # "tuned" or "untuned <family>"
    scores: dict[str, float]  # holdout score of each untuned baseline by family, and "tuned"


def keep_tuned_or_baseline(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    tuned: Classifier,
    tuned_params: dict[str, Any],
    families: list[str],
    dataset: Dataset,
    data_split: Split,
    metric: str,
    margin: float,
    seed: int,
) -> Choice:
    """The tuned model, unless an untuned baseline beats it on the holdout by more than
    `margin` in `metric`; then the best such baseline."""
    holdout = (data_split.X_holdout, data_split.y_holdout)
    scores = {"tuned": score(metric, tuned, *holdout)}
    baselines: dict[str, tuple[dict[str, Any], Classifier]] = {}
    for name in families:
        if family(name).cheap_defaults is None:
            continue
        params = untuned_params(name)
        model = build_pipeline(params, dataset.feature_types, seed)
        baselines[name] = (params, model.fit(data_split.X_train, data_split.y_train))
        scores[name] = score(metric, baselines[name][1], *holdout)
    sign = -1.0 if direction(metric) == "minimize" else 1.0
    best = max(baselines, key=lambda name: sign * scores[name], default=None)
    if best is None or not is_better(metric, scores[best], scores["tuned"], margin):
        return Choice(tuned, tuned_params, "tuned", scores)
    params, model = baselines[best]
    return Choice(model, params, f"untuned {best}", scores)
