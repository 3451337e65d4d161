"""The lock between processes (`ml.common.locks`) and the promotion gate's use of it, on a
SQLite file and on a real PostgreSQL (the `ct_database` fixture runs each test on both).

The second holder is another thread with its own connection, as another process would be."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from ml.common.locks import LockTimeout, database_lock
from ml.registry import GateLockTimeout, RegistryError, gate_lock
from tests.conftest import REPO_ROOT

HOLD = """
import sys, time
from ml.common.locks import database_lock
with database_lock(sys.argv[1], "gate:m", wait_s=5):
    print("held", flush=True)
    time.sleep(120)
"""


def in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_held_lock_makes_the_next_one_wait_then_passes_it_on(ct_database: str) -> None:
    waited, got = threading.Event(), threading.Event()

    def second() -> None:
        with database_lock(ct_database, "gate:m", wait_s=60, on_wait=waited.set):
            got.set()

    with database_lock(ct_database, "gate:m", wait_s=5):
        thread = in_thread(second)
        assert waited.wait(timeout=30)
        assert not got.wait(timeout=0.5)  # still waiting while the first holds it
    assert got.wait(timeout=30)
    thread.join(timeout=30)


def test_a_lock_held_too_long_is_a_clear_gate_error(ct_database: str) -> None:
    errors: list[Exception] = []

    def second() -> None:
        try:
            with gate_lock(ct_database, "m", wait_s=1):
                pass
        except GateLockTimeout as exc:
            errors.append(exc)

    with gate_lock(ct_database, "m"):
        in_thread(second).join(timeout=60)
    [error] = errors
    assert "another gate held the promotion lock of m for more than 1 s" in str(error)
    assert isinstance(error.__cause__, LockTimeout)


def test_a_killed_holder_leaves_no_lock(ct_database: str) -> None:
    """The lock is the holder's connection's: SIGKILL closes it, and the lock with it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, ct_database],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            with database_lock(ct_database, "gate:m", wait_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with database_lock(ct_database, "gate:m", wait_s=10):
        pass


def test_an_unsupported_database_is_named() -> None:
    with pytest.raises(RegistryError, match="ct_database: .*SQLite or PostgreSQL only"):
        with gate_lock("mysql+pymysql://u:p@db/ct", "m"):
            pass
