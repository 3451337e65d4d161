"""The promotion gate: a challenger becomes `champion` only if it wins on the same holdout.

Gates run one at a time (`gate_lock`): two pipelines finishing together would otherwise both
read "no champion yet" and both promote, the alias ending on whichever wrote last. Reading the
champion, comparing and moving the alias happen inside the lock, so the second gate compares
its challenger with the champion the first one just chose. The lock lives in the CT database
(`MLOPS_CT_DATABASE`, where `ml.retrain` serializes CT runs), shared by every machine when it
is PostgreSQL (`ml.common.locks`); a gate killed half-way leaves no lock behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ml.data import Split
from ml.decision import Classifier
from ml.common.locks import LockTimeout, database_lock
from ml.common.stages import STAGE_LOGGER
from ml.common.tasks import CLASSIFICATION
from ml.evaluation import is_better, score
from ml.model_ref import ModelRef

CHAMPION = "champion"
# The version tag naming what a version predicts (`ml.training` sets it); a version without it
# is a classifier: every version was, before regression. The gate compares one task only.
TASK_TAG = "task"
UNTAGGED_TASK = CLASSIFICATION
GATE_LOCK_WAIT_S = 600.0  # a gate takes seconds; one that waits this long is stuck
log = logging.getLogger(__name__)
stage_log = logging.getLogger(STAGE_LOGGER)


class RegistryError(ValueError):
    """A registry request a user can get wrong: unknown model, unknown version."""


class GateLockTimeout(RegistryError):
    """Another gate held the promotion lock for longer than this gate waits."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, and on which scores; recorded as `gate.*` version tags."""

    promoted: bool
    reason: str
    metric: str
    challenger_version: str
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None

    def as_tags(self) -> dict[str, str]:
        """The decision as MLflow tags (None becomes '-')."""
        return {
            f"gate.{key}": "-" if value is None else str(value)
            for key, value in asdict(self).items()
        }


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The number of the version holding the `champion` alias, or None before the first
    promotion. A string whatever the store: the SQLite store answers ints, a server strings."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def load_pipeline(ref: ModelRef) -> Classifier:
    """The bare fitted sklearn model of one registered version, for scoring a holdout: its
    pipeline, wrapped with its decision threshold when it has one, so the gate scores the
    decisions users get (serving's `ml.predict.load_version` adds what scoring raw request
    rows needs)."""
    pipeline: Classifier = mlflow.sklearn.load_model(ref.uri)
    return pipeline


def run_gate(  # pylint: disable=too-many-arguments
    client: MlflowClient,
    name: str,
    challenger: str,
    split: Split,
    metric: str,
    margin: float,
    *,
    lock_database: str | None = None,
) -> GateDecision:
    """Score challenger and champion on one holdout; promote only on a clear win. With
    `lock_database` (an SQLAlchemy URL: the CT database), under `gate_lock`."""
    challenger_score = score(
        metric, load_pipeline(ModelRef(name, challenger)), split.X_holdout, split.y_holdout
    )
    with gate_lock(lock_database, name) if lock_database else nullcontext():
        return _decide_and_record(client, name, challenger, challenger_score, split, metric, margin)


def _decide_and_record(  # pylint: disable=too-many-arguments
    client: MlflowClient,
    name: str,
    challenger: str,
    challenger_score: float,
    split: Split,
    metric: str,
    margin: float,
) -> GateDecision:
    incumbent = champion_version(client, name)
    if incumbent is None:
        decision = GateDecision(
            True, "no champion yet", metric, challenger, challenger_score, None, None
        )
    elif incumbent == challenger:
        decision = GateDecision(
            False,
            "already champion",
            metric,
            challenger,
            challenger_score,
            incumbent,
            challenger_score,
        )
    elif (tasks := _tasks(client, name, challenger, incumbent))[0] != tasks[1]:
        decision = GateDecision(
            False,
            f"cannot compare a {tasks[0]} challenger with the {tasks[1]} champion "
            f"(version {incumbent}): register it under another model name (MLOPS_MODEL_NAME), "
            "or promote it by hand (`mlops promote`) to replace the champion",
            metric,
            challenger,
            challenger_score,
            incumbent,
            None,
        )
    else:
        decision = _compare(name, metric, margin, challenger, challenger_score, incumbent, split)
    _record(client, name, decision)
    return decision


def version_task(client: MlflowClient, name: str, version: str) -> str:
    """What a version predicts: its task tag, classification for a version without one."""
    return client.get_model_version(name, version).tags.get(TASK_TAG, UNTAGGED_TASK)


def _tasks(client: MlflowClient, name: str, challenger: str, champion: str) -> tuple[str, str]:
    return version_task(client, name, challenger), version_task(client, name, champion)


@contextmanager
def gate_lock(database: str, name: str, wait_s: float = GATE_LOCK_WAIT_S) -> Iterator[None]:
    """The promotion lock of model `name`, in `database` (the CT database). A gate that finds
    it taken says so on the stage log and waits up to `wait_s`, then GateLockTimeout."""
    try:
        with database_lock(database, f"gate:{name}", wait_s, on_wait=lambda: _announce_wait(name)):
            yield
    except LockTimeout as exc:
        raise GateLockTimeout(
            f"another gate held the promotion lock of {name} for more than {wait_s:.0f} s; "
            "this challenger was not gated: `mlops promote` it, or run the pipeline again"
        ) from exc
    except ValueError as exc:
        raise RegistryError(f"ct_database: the promotion gate's lock: {exc}") from exc


def _announce_wait(name: str) -> None:
    stage_log.info("gate: waiting for the promotion lock of %s (another gate holds it)", name)


def _compare(
    name: str,
    metric: str,
    margin: float,
    challenger: str,
    challenger_score: float,
    incumbent: str,
    split: Split,
) -> GateDecision:
    try:
        champion_model = load_pipeline(ModelRef(name, incumbent))
        champion_score = score(metric, champion_model, split.X_holdout, split.y_holdout)
    except (MlflowException, ValueError, KeyError) as exc:
        # A champion trained on other columns cannot score today's data: it must yield.
        return GateDecision(
            True,
            f"champion cannot score this holdout: {exc}",
            metric,
            challenger,
            challenger_score,
            incumbent,
            None,
        )
    wins = is_better(metric, challenger_score, champion_score, margin)
    verb = "beats" if wins else "does not beat"
    reason = (
        f"challenger {metric}={challenger_score:.4f} {verb} champion "
        f"{champion_score:.4f} by more than margin {margin}"
    )
    return GateDecision(
        wins, reason, metric, challenger, challenger_score, incumbent, champion_score
    )


def _record(client: MlflowClient, name: str, decision: GateDecision) -> None:
    for key, value in decision.as_tags().items():
        client.set_model_version_tag(name, decision.challenger_version, key, value)
    client.set_model_version_tag(
        name,
        decision.challenger_version,
        "gate.decision",
        "promoted" if decision.promoted else "rejected",
    )
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, decision.challenger_version)
    log.info(
        "gate: %s version %s %s (%s)",
        name,
        decision.challenger_version,
        "promoted" if decision.promoted else "rejected",
        decision.reason,
        extra=decision_fields(name, decision),
    )


def decision_fields(name: str, decision: GateDecision) -> dict[str, object]:
    """The decision as the ECS/`mlops.*` fields of a log record (the names of the
    `mlops.promotion` events, so one query finds both)."""
    fields: dict[str, object] = {
        "event.action": "promotion-gate",
        "event.outcome": "success" if decision.promoted else "failure",
        "mlops.model.name": name,
        "mlops.model.version": decision.challenger_version,
        "mlops.promotion.decision": "promoted" if decision.promoted else "rejected",
        "mlops.promotion.reason": decision.reason,
        "mlops.promotion.metric": decision.metric,
        "mlops.promotion.challenger_version": decision.challenger_version,
        "mlops.promotion.champion_version": decision.champion_version,
        "mlops.promotion.challenger_score": decision.challenger_score,
        "mlops.promotion.champion_score": decision.champion_score,
    }
    return {key: value for key, value in fields.items() if value is not None}


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    reason: str = "manual",
    *,
    lock_database: str | None = None,
) -> None:
    """A person's override: make `version` the champion, recording who decided. With
    `lock_database`, under `gate_lock`, so it cannot interleave with a running gate."""
    with gate_lock(lock_database, name) if lock_database else nullcontext():
        _promote(client, name, version, reason)


def _promote(client: MlflowClient, name: str, version: str, reason: str) -> None:
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        known = [str(mv.version) for mv in client.search_model_versions(f"name='{name}'")]
        if not known:
            raise RegistryError(f"model {name!r} is not registered") from exc
        raise RegistryError(
            f"model {name!r} has no version {version}; "
            f"versions: {', '.join(sorted(known, key=int))}"
        ) from exc
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "gate.decision", "promoted")
    client.set_model_version_tag(name, version, "gate.reason", reason)
    client.set_model_version_tag(name, version, "gate.champion_version", previous or "-")
    log.info(
        "manual promotion: %s version %s is champion (%s)",
        name,
        version,
        reason,
        extra={
            "event.action": "promotion-manual",
            "mlops.model.name": name,
            "mlops.model.version": str(version),
            "mlops.promotion.decision": "promoted",
            "mlops.promotion.reason": reason,
            "mlops.promotion.champion_version": previous or "-",
        },
    )
