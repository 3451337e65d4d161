"""Which Optuna study a training run joins: one per objective, so a run resumes only a study
it can continue.

Trial scores are comparable only while everything that defines them stays the same: the
model name, the data, the task, the metric and its direction, the decision metric a binary
trial's threshold is chosen for, the CV folds (their number, and the holdout share and seed
that choose their rows), the families and their search spaces.
All of it is the study's identity and goes into its name, so a change starts a new study;
when a study of the same model and data exists, the run says what changed. An explicit
`MLOPS_STUDY_NAME` wins: that study is the user's choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Literal

import optuna

from ml.common.stages import STUDY_LOGGER
from ml.config import Settings
from ml.evaluation import direction
from ml.common.tasks import CLASSIFICATION
from ml.families import ModelFamily, family
from ml.storage import study_storage

IDENTITY_ATTR = "mlops.identity"  # the study's user attribute holding its identity
CREATED_ATTR = "mlops.created"
log = logging.getLogger(STUDY_LOGGER)

# How a changed component reads in "new study ...: tuning metric changed roc_auc -> f1".
LABELS = {
    "model_name": "model name",
    "data_fingerprint": "data",
    "task": "task",
    "metric": "tuning metric",
    "decision": "decision metric",
    "direction": "direction",
    "cv_folds": "CV folds",
    "test_size": "holdout share",
    "seed": "seed",
    "families": "families",
    "search_space": "search space",
}


@dataclass(frozen=True)
class StudyIdentity:  # pylint: disable=too-many-instance-attributes
    """Everything that defines a trial's score."""

    model_name: str
    data_fingerprint: str
    task: str
    metric: str
    direction: Literal["minimize", "maximize"]
    # The metric binary trials choose their threshold for ("none": 0.5); with it a trial's
    # F1 or accuracy is scored at its own threshold, not 0.5.
    decision: str
    cv_folds: int
    test_size: float
    seed: int  # the holdout split and the CV folds follow it
    families: str  # in the configured order: the order of the study's "family" choices
    search_space: str  # `search_space_version` of those families

    @classmethod
    def of(cls, settings: Settings, fingerprint: str, task: str = CLASSIFICATION) -> StudyIdentity:
        """The identity of the study these settings define on data with this fingerprint."""
        return cls(
            model_name=settings.model_name,
            data_fingerprint=fingerprint,
            task=task,
            metric=settings.tuning_metric,
            direction=direction(settings.tuning_metric),
            decision=settings.decision or "none",
            cv_folds=settings.cv_folds,
            test_size=settings.test_size,
            seed=settings.seed,
            families="+".join(settings.families),
            search_space=search_space_version(tuple(settings.families)),
        )

    @property
    def name(self) -> str:
        """Readable where it usually changes (data, task, metric, folds), and a digest of all
        of it: `<model>-<data sha[:12]>-<task>-<metric>-cv<folds>-<digest>`."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return (
            f"{self.model_name}-{self.data_fingerprint[:12]}-{self.task}-{self.metric}"
            f"-cv{self.cv_folds}-{digest[:8]}"
        )

    def same_model_and_data(self, recorded: dict[str, Any]) -> bool:
        """True for a study recorded with this model name and data."""
        return (recorded.get("model_name"), recorded.get("data_fingerprint")) == (
            self.model_name,
            self.data_fingerprint,
        )

    def changes_since(self, recorded: dict[str, Any]) -> list[str]:
        """What differs from an earlier study's recorded identity, one phrase per component."""
        return [
            f"{LABELS[key]} changed {_shown(key, recorded.get(key))} -> {_shown(key, value)}"
            for key, value in asdict(self).items()
            if recorded.get(key) != value
        ]


def _shown(key: str, value: Any) -> str:
    return str(value)[:12] if key == "data_fingerprint" and value else str(value)


def search_space_version(families: tuple[str, ...]) -> str:
    """A short digest of these families' search spaces (`space_definition`): editing a space,
    or the estimator a family builds, starts a new study."""
    spaces = {name: _space_of(name) for name in families}
    return hashlib.sha256(json.dumps(spaces, sort_keys=True).encode()).hexdigest()[:8]


@lru_cache(maxsize=None)
def _space_of(name: str) -> dict[str, Any]:
    return space_definition(family(name))


def space_definition(entry: ModelFamily) -> dict[str, Any]:
    """One family's space as Optuna sees it: the distribution of each parameter it asks for
    (Optuna's JSON), its preprocessing, and the estimator's other (fixed) arguments.

    Traced by asking a throwaway in-memory trial, so the definition is what the code does,
    not its text: comments and formatting do not count. A family whose space branches (none
    does yet) is traced along the branch a first random sample takes.
    """
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created" each time
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    estimator = entry.build(entry.search_space(trial), 0)
    searched = {entry.argument(name) for name in trial.params}
    fixed = {key: value for key, value in estimator.get_params().items() if key not in searched}
    return {
        "distributions": {
            param: optuna.distributions.distribution_to_json(distribution)
            for param, distribution in sorted(trial.distributions.items())
        },
        "scale_numeric": entry.scale_numeric,
        "estimator": type(estimator).__name__,
        "arguments": {key: repr(value) for key, value in sorted(fixed.items())},
    }


@dataclass(frozen=True)
class StudyPlan:
    """The study a run joins and what the run says about it."""

    name: str
    identity: StudyIdentity | None  # None: the user named the study (MLOPS_STUDY_NAME)
    note: str


def plan_study(settings: Settings, fingerprint: str, task: str = CLASSIFICATION) -> StudyPlan:
    """The study for these settings and data: resumed when its whole identity matches, else a
    new one, naming what changed since the latest study of the same model and data."""
    warn_if_unshared(settings)
    if settings.study_name:
        name = settings.study_name
        return StudyPlan(name, None, f"study {name} (MLOPS_STUDY_NAME)")
    identity = StudyIdentity.of(settings, fingerprint, task)
    studies = study_storage(settings.optuna_storage).get_all_studies()
    if any(study.study_name == identity.name for study in studies):
        return StudyPlan(identity.name, identity, f"resuming study {identity.name}")
    earlier = [
        study.user_attrs
        for study in studies
        if identity.same_model_and_data(study.user_attrs.get(IDENTITY_ATTR) or {})
    ]
    note = f"new study {identity.name}"
    if earlier:
        latest = max(earlier, key=lambda attrs: str(attrs.get(CREATED_ATTR, "")))
        note += ": " + ", ".join(identity.changes_since(latest[IDENTITY_ATTR]))
    return StudyPlan(identity.name, identity, note)


def open_study(settings: Settings, plan: StudyPlan) -> None:
    """Create the planned study if it is new, recording its identity for later runs' notes
    (`ml.tuning.create_study` then loads it); announce the plan."""
    log.info(plan.note)
    if plan.identity is None:
        return
    study = optuna.create_study(
        study_name=plan.name,
        storage=study_storage(settings.optuna_storage),
        load_if_exists=True,
        direction=plan.identity.direction,
    )
    if IDENTITY_ATTR not in study.user_attrs:
        study.set_user_attr(IDENTITY_ATTR, asdict(plan.identity))
        study.set_user_attr(CREATED_ATTR, datetime.now(timezone.utc).isoformat())


_warned: set[str] = set()


def warn_if_unshared(settings: Settings) -> None:
    """Once per process: a tracking server or database with no Optuna storage of its own keeps
    the studies in a file on this machine, which other machines tracking there do not share."""
    if not settings.unshared_study_storage or settings.optuna_storage in _warned:
        return
    _warned.add(settings.optuna_storage)
    log.warning(
        "Optuna studies stay on this machine (%s): MLFLOW_TRACKING_URI is a server or a "
        "database that Optuna cannot share, so other machines tracking to it will not share "
        "them; set MLOPS_OPTUNA_STORAGE to a PostgreSQL/MySQL database of their own to share them",
        settings.optuna_storage,
    )
