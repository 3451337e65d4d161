"""A lock between processes, held in a database they share: a PostgreSQL session advisory
lock (every machine using that server), or SQLite's write lock on a local file (`BEGIN
IMMEDIATE` in a transaction that writes nothing). Both end with the connection, so a process
killed while holding one leaves nothing to clean up.

Used by the promotion gate (`ml.registry.gate_lock`) and by the first use of a tracking store
(`ml.common.tracking`), in the CT database (`MLOPS_CT_DATABASE`), where `ml.retrain` keeps
its own lock row for CT runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

DIALECTS = ("postgresql", "sqlite")


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than this one waits."""


@contextmanager
def database_lock(
    database: str, name: str, wait_s: float, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Lock `name` in `database` (an SQLAlchemy URL) for the block. When another process
    holds it, `on_wait` is called once and the wait lasts up to `wait_s`, then LockTimeout.
    SQLite locks the whole file, whatever the name; PostgreSQL only that name."""
    engine = sa.create_engine(database, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    dialect = engine.dialect.name
    if dialect not in DIALECTS:
        raise ValueError(
            f"a lock in the {dialect} database {engine.url!r}: SQLite or PostgreSQL only"
        )
    file = engine.url.database if dialect == "sqlite" else None
    if file and file != ":memory:":
        Path(file).parent.mkdir(parents=True, exist_ok=True)  # a fresh var/
    key = int.from_bytes(hashlib.sha256(f"mlops:{name}".encode()).digest()[:8], "big", signed=True)
    try:
        with engine.connect() as connection:
            if not _try_lock(connection, key):
                if on_wait is not None:
                    on_wait()
                _wait_for_lock(connection, key, wait_s)
            try:
                yield
            finally:
                _unlock(connection, key)
    finally:
        engine.dispose()


def _try_lock(connection: sa.Connection, key: int) -> bool:
    if connection.dialect.name == "postgresql":
        taken = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
        return bool(taken.scalar())
    connection.exec_driver_sql("PRAGMA busy_timeout = 0")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except sa.exc.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    return True


def _wait_for_lock(connection: sa.Connection, key: int, wait_s: float) -> None:
    milliseconds = int(wait_s * 1000)
    try:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT set_config('lock_timeout', :timeout, false)"),
                {"timeout": f"{milliseconds}ms"},
            )
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        else:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {milliseconds}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    except sa.exc.OperationalError as exc:
        raise LockTimeout(f"the lock was still held after {wait_s:.0f} s") from exc


def _unlock(connection: sa.Connection, key: int) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    else:
        connection.exec_driver_sql("ROLLBACK")
