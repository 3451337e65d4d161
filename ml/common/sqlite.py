"""SQLite files several processes share: WAL with normal syncing on every connection.

A commit then no longer waits for an fsync, and readers run beside one writer. The mode stays
with the file, so this is for local files only (WAL needs every process on one host). Used by
the Optuna storage, the MLflow tracking writer and the predictions/outcomes store.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy import event

log = logging.getLogger(__name__)


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
