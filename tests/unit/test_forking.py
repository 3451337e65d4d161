"""A forked child and its parent sharing a SQLite file in WAL mode, as the trial workers, the
MLflow writer and the tuning process do (ml/forking.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ml.common.sqlite import use_wal
from ml.forking import FORK, start

CHILD_ROWS = 50


def _write_after_the_parent_closed(url: str, ready: Any, parent_closed: Any) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as connection:  # the child's own connection, open from here on
        connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
        ready.set()
        parent_closed.wait(timeout=30)
        for _ in range(CHILD_ROWS):
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            connection.commit()


def test_a_child_s_commits_survive_the_parent_closing_its_last_connection(
    tmp_path: Path,
) -> None:
    """Before `start` closed the parent's pooled SQLite connections, the child inherited
    SQLite's lock bookkeeping and never took a real shared lock: the parent, closing its last
    connection, thought itself the file's only user and deleted the WAL with the child's
    commits in it (this test then read 1 row, not 51). In CI the close was a SIGTERM landing in
    the tuning process's progress callback (`study.best_value`): SQLAlchemy invalidates, so
    closes, a connection an exit exception interrupts, and a trial worker met "database is
    locked" while the WAL was being deleted."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = sa.create_engine(url)
    use_wal(engine)
    with engine.begin() as connection:  # pooled, and open, when the child is forked
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    ready, parent_closed = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_write_after_the_parent_closed, args=(url, ready, parent_closed))
    start(child)
    assert ready.wait(timeout=30), "the child did not open the file"
    with engine.connect() as connection:  # the parent uses the file again, then lets go
        connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
    engine.dispose()
    parent_closed.set()
    child.join(timeout=60)
    assert child.exitcode == 0

    with sa.create_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1 + CHILD_ROWS
