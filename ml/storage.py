"""The Optuna study's storage: a SQLite file on one host by default, a database across machines,
or, opted in, a journal file.

The SQLite file runs through `SQLiteStudyStorage`: WAL with normal syncing, and the write lock
taken up front by writes. An RDB URL (PostgreSQL, MySQL) is the storage that machines share. A
location without `://` is `JournalStorage(JournalFileBackend)`: an append-only file under a file
lock, 0.44-0.47x the SQLite storage's time per trial (`make bench-storage`, docs/training.md),
not the default while a SIGTERM inside its append leaves Optuna's lock release failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from sqlalchemy import event

from ml.common.sqlite import wal

# Every RDBStorage method that writes, including the private ones Optuna's cache calls.
WRITES = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "record_heartbeat",
    "upgrade",
)
_writing = contextvars.ContextVar("optuna_storage_writing", default=False)


def study_storage(location: str) -> optuna.storages.BaseStorage:
    """The storage `location` names: a journal file path, or an RDB URL (for SQLite,
    `SQLiteStudyStorage`). Open one per process: a JournalStorage carries the id its
    process writes trials under, and an engine's pooled connections must not cross a fork."""
    if is_journal(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if location.startswith("sqlite"):
        return SQLiteStudyStorage(location)
    return optuna.storages.RDBStorage(location)


def is_journal(location: str) -> bool:
    """A location without a URL scheme is a journal file."""
    return "://" not in location


@contextlib.contextmanager
def journal_locked(path: Path) -> Iterator[None]:
    """Hold the journal's own write lock (as its backend takes it for each append), so a copy
    made meanwhile ends on a whole record."""
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _takes_the_write_lock(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def writing(*args: Any, **kwargs: Any) -> Any:
        token = _writing.set(True)
        try:
            return method(*args, **kwargs)
        finally:
            _writing.reset(token)

    return writing


class SQLiteStudyStorage(optuna.storages.RDBStorage):
    """RDB storage on a SQLite file: WAL, and the write lock taken up front, by writes only.

    Optuna starts a queued trial by reading that it is WAITING and then marking it RUNNING,
    relying on SELECT ... FOR UPDATE, which SQLite ignores: two workers could both start the
    same queued trial, and the second to finish crashed `optimize` ("Cannot tell a COMPLETE
    trial"; optuna/optuna#4002). Its writes read first, too, and a deferred transaction
    that a commit overtakes between its read and its write fails at once. So every method that
    writes begins with BEGIN IMMEDIATE. Reads (the sampler's and the pruner's trial lists, the
    heaviest queries) begin deferred and, in WAL mode, run beside a writer: with every
    transaction immediate, two worker processes ran no faster than one.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        event.listen(self.engine, "connect", _sqlite_connect)
        event.listen(self.engine, "begin", _begin)
        self.engine.dispose()  # pooled connections predate the listeners


for _name in WRITES:
    setattr(
        SQLiteStudyStorage,
        _name,
        _takes_the_write_lock(getattr(optuna.storages.RDBStorage, _name)),
    )


def _sqlite_connect(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # the driver must not BEGIN on its own: we do
    wal(connection)


def _begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE" if _writing.get() else "BEGIN")
