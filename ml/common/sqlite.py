"""SQLite files several processes share: WAL with normal syncing on every connection.

A commit then no longer waits for an fsync, and readers run beside one writer. The mode stays
with the file, so this is for local files only (WAL needs every process on one host). Used by
the Optuna storage, the MLflow tracking writer and the predictions/outcomes store.

A SQLite file must not be open in a process that forks (sqlite.org/howtocorrupt.html,
"Carrying an open database connection across a fork()"). SQLite keeps its POSIX locks'
bookkeeping per process and a child inherits the parent's copy, so the child's own connections
never took the shared lock that tells others it is there. The parent, closing its last
connection, then took the file for its own: it checkpointed and deleted the WAL under the
child, whose commits were lost (and whose writers met "database is locked"). So
`close_before_fork` closes every pooled SQLite connection first.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, event

log = logging.getLogger(__name__)

# Every SQLAlchemy engine on a SQLite file this process has connected, MLflow's and Optuna's too.
_file_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@event.listens_for(Engine, "engine_connect")
def _remember_file_engine(connection: Connection) -> None:
    engine = connection.engine
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        _file_engines.add(engine)


def close_before_fork() -> None:
    """Close the pooled connections of every SQLite file engine (they reopen on next use),
    so none crosses the fork. An in-memory database would not survive it, and is left."""
    for engine in list(_file_engines):
        engine.dispose()


def use_wal(engine: Any) -> None:
    """WAL on every new connection of a SQLite `engine`, where it can be had (another process
    holding the file keeps its mode); other databases are left as they are."""
    if engine.url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _wal_if_possible)
        engine.dispose(close=False)  # pooled connections predate the listener


def _wal_if_possible(connection: Any, _record: Any) -> None:
    try:
        wal(connection)
    except sqlite3.OperationalError as exc:  # another process holds the file: keep its mode
        log.debug("SQLite stays in its journal mode: %s", exc)


def wal(connection: Any) -> None:
    """WAL and normal syncing on one DB-API connection."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
