"""Forked child processes: trial workers and the MLflow writer.

Forked, not spawned: a child starts in milliseconds with scikit-learn, MLflow and the prepared
folds already in memory, where a spawned one spends 4-8 s importing them. Linux only.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from ml.common.sqlite import close_before_fork

FORK = multiprocessing.get_context("fork")


def start(process: BaseProcess) -> None:
    """Start a forked child, with no SQLite file open (`close_before_fork`); flush first, or
    the child prints an unflushed buffer again."""
    close_before_fork()
    sys.stdout.flush()
    sys.stderr.flush()
    process.start()


def next_message(messages: Any, processes: Sequence[BaseProcess], poll_s: float = 1.0) -> Any:
    """The next message from `processes`; ChildProcessError once one of them has died
    (non-zero exit) with nothing left to read, so the reader never waits for a dead child."""
    while True:
        try:
            return messages.get(timeout=poll_s)
        except queue.Empty:
            for process in processes:
                if process.exitcode not in (None, 0):
                    raise ChildProcessError(
                        f"{process.name} exited with code {process.exitcode}"
                    ) from None


def join_reading(processes: Sequence[BaseProcess], messages: Any, poll_s: float = 0.1) -> None:
    """Join `processes`, discarding what they still send: a child exits only once its queued
    messages are in the pipe, so a full pipe that nobody reads would hold it, and the join,
    for good (a worker terminated while the other went on reporting trials hung a SIGTERMed
    pipeline)."""
    for process in processes:
        while process.is_alive():
            process.join(poll_s)
            try:
                while True:
                    messages.get_nowait()
            except queue.Empty:
                pass
