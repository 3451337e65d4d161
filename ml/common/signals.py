"""SIGTERM as an exception, and forked children that die with their parent.

`kill <pid>` (Jenkins' abort, a CronJob's deadline, systemd) sends SIGTERM, whose default action
ends the process without running a `finally`: forked trial workers and the MLflow writer went on
as orphans, the MLflow run stayed RUNNING. Raised as `Terminated` instead, the usual unwinding
stops the workers, marks the running trials FAIL and the run KILLED. A SIGKILL cannot be caught:
children then learn of it from the kernel (`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that what already stops cleanly on Ctrl-C
    (Optuna marks the trial FAIL, MLflow ends the run KILLED) does so on SIGTERM too, and no
    `except Exception` swallows it. `stage` names the pipeline stage it interrupted."""

    def __init__(self) -> None:
        super().__init__("terminated by SIGTERM")
        self.stage: str | None = None


class TerminatedWithoutTraceback(logging.Filter):
    """Keeps the line of a record caused by `Terminated` (Optuna's "trial failed") and drops
    its traceback: a stopped run is not a bug to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Terminated):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_terminations(logger_name: str) -> None:
    """Add the filter to the handlers of `logger_name` (a library's own handlers, which its
    child loggers' records reach without passing the logger's filters)."""
    for handler in logging.getLogger(logger_name).handlers:
        if not any(isinstance(f, TerminatedWithoutTraceback) for f in handler.filters):
            handler.addFilter(TerminatedWithoutTraceback())


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    if _Deferral.held:
        _Deferral.pending = True
        return
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` (children forked meanwhile inherit it);
    the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Deferral:  # pylint: disable=too-few-public-methods
    """Whether a SIGTERM is held back now, and whether one came meanwhile. Python runs signal
    handlers in the main thread only, so plain class attributes do."""

    held = False
    pending = False


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Within the block a SIGTERM is remembered, not raised, except inside `sigterm_allowed`;
    one remembered is raised as `Terminated` when the block ends. For work that a SIGTERM may
    interrupt only at chosen points: a trial's objective, not Optuna's bookkeeping around it."""
    previous, _Deferral.held = _Deferral.held, True
    try:
        yield
    finally:
        _Deferral.held = previous
    if not previous and _Deferral.pending:  # only on a normal exit: never hide an exception
        _Deferral.pending = False
        raise Terminated()


@contextmanager
def sigterm_allowed() -> Iterator[None]:
    """Within a deferred block, the part a SIGTERM may interrupt: one remembered is raised on
    entry, a new one at once."""
    previous, _Deferral.held = _Deferral.held, False
    try:
        if _Deferral.pending:
            _Deferral.pending = False
            raise Terminated()
        yield
    finally:
        _Deferral.held = previous


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to send this (forked) process SIGTERM when its parent dies, even by
    SIGKILL; exit now if the parent is already gone. Linux only, as the forking is."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(EXIT_CODE)  # pylint: disable=protected-access
