"""Acting on the triggers: one retrain at a time, from the source plus the labelled feedback.

`retrain(settings)` checks the triggers (`ml.ct`). When any fires and the cooldown allows, it
trains a challenger on the configured source plus the served predictions that have a reported
outcome (their stored features with the reported labels, once there are at least
`MLOPS_CT_MIN_LABELS`: with unchanged data, a performance drop would otherwise retrain the same
model), records why on the MLflow run and the new version, and lets the gate decide.

Two runs never overlap, wherever they start (CLI, Jenkins, a CronJob): a lock row in the CT
database, taken by one atomic conditional UPDATE and kept alive by a heartbeat. A run that
crashed leaves a lock whose heartbeat stops; after `MLOPS_CT_LOCK_STALE_S` the next run
reclaims it. Every run is a row in `ct_runs` (what fired, what it did), which also holds the
cooldown: no retrain within `MLOPS_CT_COOLDOWN_S` of the last one.

A run someone asked for (`mlops ct run --force`, which `POST /admin/retrain` runs as a Ray job)
fires the `manual` trigger and skips the cooldown, not the lock; its `ct_runs` row carries the
request's id, so whoever asked can read the result from the shared database.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from ml import ct
from ml.config import Settings
from ml.data import Dataset, validate
from ml.outcomes import OutcomeStore, dialect_insert, prune_expired, stored_utc

if TYPE_CHECKING:  # imported when training runs: it loads scikit-learn, Optuna, matplotlib
    from ml.pipeline import PipelineResult
    from ml.tuning import TrialCallback

LOCK_NAME = "ct"
EVIDENCE_TAG_LIMIT = 5000  # MLflow tag values are bounded; the ECS events keep it whole

state = sa.MetaData()
ct_lock = sa.Table(
    "ct_lock",
    state,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)
ct_runs = sa.Table(
    "ct_runs",
    state,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("triggers", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True, index=True),
    sa.Column("trained_version", sa.String(32), nullable=True),
    sa.Column("promoted", sa.Boolean, nullable=True),
)


@dataclass(frozen=True)
class RetrainOutcome:
    """What a CT run did: `no_trigger`, `cooling_down`, `locked` or `trained`."""

    outcome: str
    detail: str
    report: ct.CtReport | None = None
    result: PipelineResult | None = None  # when trained
    feedback_rows: int = 0


class CtLock:
    """The one-run-at-a-time lock, a row in the CT database."""

    def __init__(self, engine: sa.Engine, owner: str, stale_after_s: float) -> None:
        self._engine = engine
        self.owner = owner
        self._stale_after = timedelta(seconds=stale_after_s)

    def acquire(self) -> tuple[bool, str]:
        """(True, note) when this owner now holds the lock, reclaiming a stale one; else
        (False, who holds it since when)."""
        now = datetime.now(UTC)
        with self._engine.begin() as connection:
            previous = connection.execute(
                sa.select(ct_lock.c.owner, ct_lock.c.heartbeat_at).where(
                    ct_lock.c.name == LOCK_NAME
                )
            ).first()
            connection.execute(
                dialect_insert(self._engine, ct_lock).on_conflict_do_nothing(
                    index_elements=["name"]
                ),
                {"name": LOCK_NAME, "owner": self.owner, "acquired_at": now, "heartbeat_at": now},
            )
            taken = connection.execute(
                ct_lock.update()
                .where(ct_lock.c.name == LOCK_NAME)
                .where(
                    sa.or_(
                        ct_lock.c.owner == self.owner,
                        ct_lock.c.heartbeat_at < now - self._stale_after,
                    )
                )
                .values(owner=self.owner, acquired_at=now, heartbeat_at=now)
            ).rowcount
            holder = connection.execute(
                sa.select(ct_lock.c.owner, ct_lock.c.acquired_at).where(ct_lock.c.name == LOCK_NAME)
            ).one()
        if taken == 1:
            if previous is not None and previous.owner != self.owner:
                return True, f"reclaimed a stale lock of {previous.owner}"
            return True, "acquired"
        since = stored_utc(holder.acquired_at)
        return False, f"another CT run holds the lock: {holder.owner} since {since}"

    def heartbeat(self) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                ct_lock.update()
                .where(ct_lock.c.name == LOCK_NAME, ct_lock.c.owner == self.owner)
                .values(heartbeat_at=datetime.now(UTC))
            )

    def release(self) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                ct_lock.delete().where(ct_lock.c.name == LOCK_NAME, ct_lock.c.owner == self.owner)
            )

    @contextmanager
    def held(self, every_s: float) -> Iterator[tuple[bool, str]]:
        """The lock for the block (heartbeat every `every_s`), released after it."""
        acquired, note = self.acquire()
        if not acquired:
            yield False, note
            return
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop, every_s), daemon=True)
        beat.start()
        try:
            yield True, note
        finally:
            stop.set()
            beat.join()
            self.release()

    def _beat(self, stop: threading.Event, every_s: float) -> None:
        while not stop.wait(every_s):
            self.heartbeat()


@dataclass(frozen=True)
class Request:
    """A retrain someone asked for: it runs whatever the triggers say, cooldown or not."""

    id: str
    by: str


def retrain(
    settings: Settings,
    callbacks: list[TrialCallback] | None = None,
    now: datetime | None = None,
    request: Request | None = None,
) -> RetrainOutcome:
    """One CT run: check, and when a trigger fires (cooldown allowing) or `request` asks,
    retrain and gate."""
    store = open_state(settings)
    started = now or datetime.now(UTC)
    lock = CtLock(store.engine, _owner(), settings.ct_lock_stale_s)
    with lock.held(every_s=max(1.0, settings.ct_lock_stale_s / 4)) as (acquired, note):
        if not acquired:
            outcome = RetrainOutcome("locked", note)
            _record_run(store, lock.owner, started, outcome, request)
            return outcome
        return _run_locked(settings, store, lock.owner, callbacks, started, request)


def open_state(settings: Settings) -> OutcomeStore:
    """The CT database with the lock and run tables, created (or completed) once a process:
    replicas open it for every `GET /admin/retrain/{id}`."""
    store = OutcomeStore(settings.ct_database)
    _prepare_state(store.engine)
    return store


@functools.cache
def _prepare_state(engine: sa.Engine) -> None:
    state.create_all(engine)
    _add_missing_columns(engine, ct_runs)


def _add_missing_columns(engine: sa.Engine, table: sa.Table) -> None:
    """`create_all` skips a table that exists: add the nullable columns a database made by
    an earlier version lacks, so its rows are kept."""
    present = {column["name"] for column in sa.inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        # Two processes may upgrade at once: PostgreSQL skips a column that exists, SQLite
        # (no IF NOT EXISTS for columns) says "duplicate column", which means done.
        guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
        try:
            with engine.begin() as connection:
                connection.execute(
                    sa.text(f"ALTER TABLE {table.name} ADD COLUMN {guard}{column.name} {kind}")
                )
        except sa.exc.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


def _run_locked(
    settings: Settings,
    store: OutcomeStore,
    owner: str,
    callbacks: list[TrialCallback] | None,
    now: datetime,
    request: Request | None,
) -> RetrainOutcome:
    from ml.pipeline import load_data

    source = load_data(settings)  # once: the new-data trigger and a retrain both read it
    report = ct.check(settings, now=now, source=source)
    if request is not None:
        report = ct.CtReport(report.champion, [*report.results, _manual(request)])
    if not report.fired:
        outcome = RetrainOutcome("no_trigger", "no trigger fired", report)
    else:
        cooling = None if request else _cooling_down(settings, store, report, now)
        outcome = cooling or _train(settings, store, report, source, callbacks)
    _record_run(store, owner, now, outcome, request)
    prune_expired(store, settings)  # retention: docs/continuous-training.md
    return outcome


def _manual(request: Request) -> ct.TriggerResult:
    return ct.TriggerResult(
        "manual",
        True,
        f"requested by {request.by}",
        evidence={"request_id": request.id, "requested_by": request.by},
    )


def _cooling_down(
    settings: Settings, store: OutcomeStore, report: ct.CtReport, now: datetime
) -> RetrainOutcome | None:
    """The outcome when the last retrain is too recent; None when a retrain may start."""
    last = _last_trained(store)
    cooldown = timedelta(seconds=settings.ct_cooldown_s)
    if last is None or now - last >= cooldown:
        return None
    fired = ", ".join(result.trigger for result in report.fired)
    detail = (
        f"{fired} fired; the last retrain was at {last}, the next may start at {last + cooldown}"
    )
    return RetrainOutcome("cooling_down", detail, report)


def _train(
    settings: Settings,
    store: OutcomeStore,
    report: ct.CtReport,
    source: Dataset,
    callbacks: list[TrialCallback] | None,
) -> RetrainOutcome:
    from ml.pipeline import run_pipeline

    dataset, feedback_rows = training_data(settings, store, source)
    result = run_pipeline(settings, callbacks=callbacks, dataset=dataset)
    _tag(settings, report, result, source, feedback_rows)
    decision = result.decision
    verdict = "promoted" if decision.promoted else "kept the champion"
    detail = (
        f"{', '.join(item.trigger for item in report.fired)} fired; trained version "
        f"{result.trained.version} on {dataset.report.rows} rows ({feedback_rows} from "
        f"feedback); gate: {verdict} ({decision.reason})"
    )
    return RetrainOutcome("trained", detail, report, result, feedback_rows)


def training_data(settings: Settings, store: OutcomeStore, source: Dataset) -> tuple[Dataset, int]:
    """(what to train on, how many rows came from feedback): the source plus the labelled
    predictions when there are at least `ct_min_labels` of them."""
    labelled = store.labelled(settings.model_name, settings.ct_max_feedback_rows)
    if len(labelled) < settings.ct_min_labels:
        return source, 0
    target = source.target
    # The source's columns as loaded, not coerced: validate() infers the feature types again,
    # and the new version's signature must describe the raw table, like the first version's.
    base = source.raw_features if source.raw_features is not None else source.X
    features = labelled.features.reindex(columns=list(base.columns))
    feedback = features.assign(**{target: labelled.truth})
    combined = pd.concat(
        [base.assign(**{target: source.y.to_numpy()}), feedback], ignore_index=True
    )
    dataset = validate(
        combined,
        target,
        source=f"{source.report.source} + {len(labelled)} labelled predictions",
        cv_folds=settings.cv_folds,
        test_size=settings.test_size,
        task=settings.task,
        max_classes=settings.max_classes,
    )
    return dataset, len(labelled)


def _tag(
    settings: Settings,
    report: ct.CtReport,
    result: PipelineResult,
    source: Dataset,
    feedback_rows: int,
) -> None:
    """Why this run happened, on the run and on the new version."""
    client = MlflowClient()
    evidence = {item.trigger: item.evidence for item in report.fired}
    previous = report.champion.version if report.champion else "-"
    tags = {
        "ct.triggers": ",".join(item.trigger for item in report.fired),
        "ct.reasons": "; ".join(item.reason for item in report.fired)[:EVIDENCE_TAG_LIMIT],
        "ct.evidence": json.dumps(evidence, default=str)[:EVIDENCE_TAG_LIMIT],
        "ct.previous_champion": previous,
        "ct.feedback_rows": str(feedback_rows),
    }
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
    version = result.trained.version
    client.set_model_version_tag(
        settings.model_name, version, ct.SOURCE_FINGERPRINT_TAG, source.report.fingerprint
    )
    client.set_model_version_tag(settings.model_name, version, "ct.previous_champion", previous)


def _last_trained(store: OutcomeStore) -> datetime | None:
    with store.engine.connect() as connection:
        last = connection.execute(
            sa.select(sa.func.max(ct_runs.c.started_at)).where(ct_runs.c.outcome == "trained")
        ).scalar()
    return None if last is None else stored_utc(last)


def _record_run(
    store: OutcomeStore,
    owner: str,
    started: datetime,
    outcome: RetrainOutcome,
    request: Request | None,
) -> None:
    fired = [] if outcome.report is None else [r.trigger for r in outcome.report.fired]
    result = outcome.result
    with store.engine.begin() as connection:
        connection.execute(
            ct_runs.insert().values(
                owner=owner,
                started_at=started,
                finished_at=datetime.now(UTC),
                outcome=outcome.outcome,
                triggers=",".join(fired),
                detail=outcome.detail,
                request_id=request.id if request else None,
                trained_version=result.trained.version if result else None,
                promoted=result.decision.promoted if result else None,
            )
        )


def requested_run(settings: Settings, request_id: str) -> dict[str, Any] | None:
    """What the CT run of `request_id` did (its `ct_runs` row), or None before it finished."""
    store = open_state(settings)
    with store.engine.connect() as connection:
        row = (
            connection.execute(sa.select(ct_runs).where(ct_runs.c.request_id == request_id))
            .mappings()
            .first()
        )
    return None if row is None else _plain_run(row)


def recent_runs(settings: Settings, limit: int = 10) -> list[dict[str, Any]]:
    """The newest `limit` CT runs (their `ct_runs` rows), newest first."""
    store = open_state(settings)
    query = sa.select(ct_runs).order_by(ct_runs.c.started_at.desc(), ct_runs.c.id.desc())
    with store.engine.connect() as connection:
        rows = connection.execute(query.limit(limit)).mappings().all()
    return [_plain_run(row) for row in rows]


def _plain_run(row: Any) -> dict[str, Any]:
    """A `ct_runs` row with its times as ISO 8601 UTC strings."""
    found = dict(row)
    for key in ("started_at", "finished_at"):
        found[key] = stored_utc(found[key]).isoformat() if found[key] else None
    return found


def lock_holder(settings: Settings) -> str | None:
    """Who runs CT now (a lock with a live heartbeat), or None."""
    store = open_state(settings)
    fresh = datetime.now(UTC) - timedelta(seconds=settings.ct_lock_stale_s)
    with store.engine.connect() as connection:
        row = connection.execute(
            sa.select(ct_lock.c.owner, ct_lock.c.heartbeat_at).where(ct_lock.c.name == LOCK_NAME)
        ).first()
    if row is None:
        return None
    return row.owner if stored_utc(row.heartbeat_at) >= fresh else None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
