"""Served predictions and the outcomes users report for them, kept where they can be joined.

One relational store (SQLite under `var/` by default, PostgreSQL through `MLOPS_CT_DATABASE`):
`predictions` holds what serving answered (features, label, class probabilities, model
version), `outcomes` what really happened, keyed by the same `prediction_id`. Continuous
training reads both: live quality for the performance trigger, recent inputs for drift, and the
labelled rows a retrain can learn from. Values are stored as JSON text, so labels keep their
type (`"malignant"`, `1`, `true`) and features their names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ml.common.sqlite import use_wal
from ml.config import Settings
from ml.common.values import plain

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("probabilities", sa.Text, nullable=True),
)
outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
# Serving stamps every row of a request with one time (milliseconds), so a window often cuts
# through ties; without a tie-break PostgreSQL picks an arbitrary subset in arbitrary order.
# Serving's prediction ids increase within a process (elk.events.new_ids).
NEWEST_FIRST = (predictions.c.created_at.desc(), predictions.c.prediction_id.desc())


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction, as serving hands it over (off the request path)."""

    prediction_id: str
    model_name: str
    model_version: str
    features: dict[str, Any]
    label: Any
    probabilities: dict[str, float] | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class FeedbackResult:
    """What became of one reported outcome: stored, or why not (per item, never all-or-none)."""

    prediction_id: str
    stored: bool
    error: str | None = None


@dataclass(frozen=True)
class LabelledRows:
    """Predictions joined with their outcomes, oldest first."""

    prediction_ids: list[str]
    features: pd.DataFrame
    predicted: list[Any]
    truth: list[Any]
    probabilities: list[dict[str, float] | None]
    model_versions: list[str]

    def __len__(self) -> int:
        return len(self.truth)

    def probability_matrix(self, classes: Sequence[Any]) -> np.ndarray | None:
        """Probabilities in `classes` order, or None when any row lacks them."""
        if any(row is None for row in self.probabilities):
            return None
        names = [str(label) for label in classes]
        return np.array([[row[name] for name in names] for row in self.probabilities if row])


class OutcomeStore:
    """The predictions/outcomes database; tables are created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _engine(url)

    def record_predictions(self, records: Iterable[PredictionRecord]) -> int:
        """Insert a batch; a prediction id seen before is left as it was."""
        rows = [_prediction_row(record) for record in records]
        if not rows:
            return 0
        statement = dialect_insert(self.engine, predictions).on_conflict_do_nothing(
            index_elements=["prediction_id"]
        )
        with self.engine.begin() as connection:
            connection.execute(statement, rows)
        return len(rows)

    def record_feedback(self, items: Sequence[tuple[str, Any]]) -> list[FeedbackResult]:
        """Store (prediction_id, label) outcomes. An id this store never recorded (or no longer
        keeps) is an error for that item only; a repeated id replaces its label."""
        ids = [prediction_id for prediction_id, _ in items]
        # Serving never issues a NUL, and PostgreSQL refuses one in text: a query with it
        # would fail every item of the batch.
        possible = [pid for pid in ids if "\x00" not in pid]
        with self.engine.begin() as connection:
            known: set[str] = set(
                connection.execute(
                    sa.select(predictions.c.prediction_id).where(
                        predictions.c.prediction_id.in_(possible)
                    )
                ).scalars()
            )
            now = datetime.now(UTC)
            rows = [
                {"prediction_id": pid, "label": json.dumps(plain(label)), "received_at": now}
                for pid, label in items
                if pid in known
            ]
            if rows:
                insert = dialect_insert(self.engine, outcomes)
                connection.execute(
                    insert.on_conflict_do_update(
                        index_elements=["prediction_id"],
                        set_={"label": insert.excluded.label, "received_at": now},
                    ),
                    rows,
                )
        return [
            (
                FeedbackResult(pid, True)
                if pid in known
                else FeedbackResult(pid, False, "unknown prediction_id (never issued, or expired)")
            )
            for pid in ids
        ]

    def labelled(
        self,
        model_name: str,
        limit: int,
        since: datetime | None = None,
        version: str | None = None,
    ) -> LabelledRows:
        """The `limit` most recent predictions of `model_name` that have an outcome (served
        at or after `since`, by its `version`, when given)."""
        query = (
            sa.select(
                predictions.c.prediction_id,
                predictions.c.features,
                predictions.c.label,
                predictions.c.probabilities,
                predictions.c.model_version,
                outcomes.c.label.label("truth"),
            )
            .join(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id)
            .where(predictions.c.model_name == model_name)
            .order_by(*NEWEST_FIRST)
            .limit(limit)
        )
        if version is not None:
            query = query.where(predictions.c.model_version == version)
        if since is not None:
            query = query.where(predictions.c.created_at >= since)
        with self.engine.connect() as connection:
            rows = list(reversed(connection.execute(query).all()))
        return LabelledRows(
            prediction_ids=[row.prediction_id for row in rows],
            features=pd.DataFrame([json.loads(row.features) for row in rows]),
            predicted=[json.loads(row.label) for row in rows],
            truth=[json.loads(row.truth) for row in rows],
            probabilities=[
                json.loads(row.probabilities) if row.probabilities else None for row in rows
            ],
            model_versions=[row.model_version for row in rows],
        )

    def recent_inputs(self, model_name: str, limit: int) -> pd.DataFrame:
        """Features of the `limit` most recent predictions of `model_name` (for drift)."""
        query = (
            sa.select(predictions.c.features)
            .where(predictions.c.model_name == model_name)
            .order_by(*NEWEST_FIRST)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            texts: list[str] = list(connection.execute(query).scalars())
        features = [json.loads(text) for text in texts]
        return pd.DataFrame(list(reversed(features)))

    def prune(self, keep: timedelta, keep_labelled: int = 0) -> int:
        """Delete predictions (and their outcomes) older than `keep`, except each model's
        `keep_labelled` newest labelled ones: a retrain learns from those, whatever their age.
        One transaction: a crash deletes nothing. The number of predictions deleted."""
        cutoff = datetime.now(UTC) - keep
        deleted = 0
        with self.engine.begin() as connection:
            query = sa.select(predictions.c.model_name).distinct()
            names: list[str] = list(connection.execute(query).scalars())
            for name in names:
                expired = _expired(connection, name, cutoff, keep_labelled)
                connection.execute(outcomes.delete().where(outcomes.c.prediction_id.in_(expired)))
                deleted += connection.execute(
                    predictions.delete().where(predictions.c.prediction_id.in_(expired))
                ).rowcount
        return deleted


def prune_expired(store: OutcomeStore, settings: Settings) -> int:
    """The retention of a CT run: `ct_retention_days`, keeping the labelled rows a retrain
    adds to the source (`ct_max_feedback_rows`), so pruning never takes a lesson back."""
    return store.prune(timedelta(days=settings.ct_retention_days), settings.ct_max_feedback_rows)


def _expired(
    connection: sa.Connection, model_name: str, cutoff: datetime, keep_labelled: int
) -> sa.Select[tuple[str]]:
    """The ids of one model's predictions that retention deletes (a subquery)."""
    old = sa.and_(predictions.c.model_name == model_name, predictions.c.created_at < cutoff)
    if keep_labelled > 0:
        labelled = predictions.c.prediction_id.in_(sa.select(outcomes.c.prediction_id))
        floor = _newest_labelled_floor(connection, model_name, keep_labelled)
        kept = labelled if floor is None else sa.and_(labelled, predictions.c.created_at >= floor)
        old = sa.and_(old, sa.not_(kept))
    return sa.select(predictions.c.prediction_id).where(old)


def _newest_labelled_floor(
    connection: sa.Connection, model_name: str, count: int
) -> datetime | None:
    """When the `count`-th newest labelled prediction of a model was made (None: fewer)."""
    return connection.execute(
        sa.select(predictions.c.created_at)
        .join(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id)
        .where(predictions.c.model_name == model_name)
        .order_by(predictions.c.created_at.desc())
        .offset(count - 1)
        .limit(1)
    ).scalar()


@functools.cache
def _engine(url: str) -> Engine:
    """One engine (and connection pool) per database for the process, its tables created
    once: stores are opened per request and per CT run, and a new pool (and a schema check)
    each time held connections until collected."""
    engine = _new_engine(url)
    metadata.create_all(engine)
    return engine


def _new_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":  # a fresh var/ has no directory yet
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        use_wal(engine)  # replicas write while CT reads
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def dialect_insert(engine: Engine, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL both do)."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"CT database: {engine.dialect.name} is not supported (SQLite, PostgreSQL)")


def stored_utc(moment: datetime) -> datetime:
    """A time read back from the CT database, in UTC: SQLite returns the naive UTC value it
    was given, PostgreSQL the instant in its server's TimeZone, which need not be UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    return {
        "prediction_id": record.prediction_id,
        "model_name": record.model_name,
        "model_version": str(record.model_version),
        "created_at": record.created_at or datetime.now(UTC),
        "features": json.dumps({key: plain(value) for key, value in record.features.items()}),
        "label": json.dumps(plain(record.label)),
        "probabilities": (
            json.dumps({str(key): float(value) for key, value in record.probabilities.items()})
            if record.probabilities is not None
            else None
        ),
    }
