"""Trial runs to MLflow from a forked writer process, off the trials' cores and GIL.

Every trial is a child run of the study's parent run: three `MlflowClient` calls (create,
log_batch, terminate) with an explicit parent run id. Those calls cost 15-27 ms of CPU per
run against the local SQLite store, whatever the trial, which is 10% of a 200 ms trial. In a
thread they take turns with the trials for the GIL (+11% to +31% wall on the bundled data);
in a spawned process, importing MLflow took longer than a whole study. A process forked from
this one starts with MLflow already imported, in a few milliseconds, and its CPU is its own.
Trial workers forked later inherit the queue, so trials from every process reach one writer.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sqlalchemy.engine import Engine

from ml.common.signals import EXIT_CODE, Terminated, die_with_parent
from ml.forking import FORK, next_message, start
from ml.common.sqlite import use_wal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRecord:
    """What one finished trial hands to the writer."""

    number: int
    study_name: str
    params: dict[str, Any]
    fold_scores: list[float]
    state: str  # COMPLETE, PRUNED or FAILED
    duration_s: float
    finished_ms: int


@dataclass(frozen=True)
class WriterReport:
    """What the writer sends back when it has written every record."""

    cpu_s: float
    written: int
    failures: int
    first_error: str | None


class TrialTracker:  # pylint: disable=too-many-instance-attributes
    """Logs each trial as a child run of `parent_run_id`, from a forked writer process.

    `log_trial` pickles a small record onto a queue and returns; `close()` waits until the
    writer has written them all and reports (not raises) tracking failures: a trial run that
    could not be logged must not end a study.
    """

    def __init__(
        self, client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str
    ) -> None:
        self.tracking_uri = client.tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric
        self.write_cpu_s = 0.0  # the writer's CPU: tracking's own cost
        self.written = 0
        self._records: Any = FORK.Queue()
        self._reports: Any = FORK.Queue()
        self._parent_pid = os.getpid()
        self._writer = FORK.Process(target=self._write_all, name="trial-tracking", daemon=True)
        start(self._writer)

    def log_trial(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        number: int,
        study_name: str,
        params: dict[str, Any],
        fold_scores: list[float],
        state: str,
        duration_s: float,
    ) -> None:
        """Queue the finished trial for the writer and return at once."""
        self._records.put(
            TrialRecord(
                number,
                study_name,
                dict(params),
                list(fold_scores),
                state,
                duration_s,
                int(time.time() * 1000),
            )
        )

    def close(self) -> None:
        """Wait for every trial run to be written; report (not raise) tracking failures."""
        self._records.put(None)
        try:
            report: WriterReport = next_message(self._reports, [self._writer])
        except ChildProcessError:
            self._records.cancel_join_thread()  # nobody reads the rest: do not hang on exit
            report = WriterReport(
                0.0, 0, 0, f"the writer process exited with code {self._writer.exitcode}"
            )
        self._writer.join(timeout=30)
        self.write_cpu_s, self.written = report.cpu_s, report.written
        if report.first_error is not None:
            log.warning(
                "%s trial runs could not be logged to MLflow; first error: %s",
                report.failures or "some",
                report.first_error,
            )

    def _write_all(self) -> None:
        """The writer process: one child run per record until the closing None; it ends
        with its parent, quietly (a SIGTERM meanwhile loses the records not yet written)."""
        try:
            die_with_parent(self._parent_pid)
            self._write_records()
        except Terminated:
            raise SystemExit(EXIT_CODE) from None

    def _write_records(self) -> None:
        started = time.process_time()
        client = _client_after_fork(self.tracking_uri)
        written, failures, first_error = 0, 0, None
        while (record := self._records.get()) is not None:
            try:
                self._write_run(client, record)
                written += 1
            except Exception:  # pylint: disable=broad-except  # reported by close()
                failures += 1
                first_error = first_error or traceback.format_exc(limit=3)
        self._reports.put(
            WriterReport(time.process_time() - started, written, failures, first_error)
        )

    def _write_run(self, client: MlflowClient, record: TrialRecord) -> None:
        run = client.create_run(
            self.experiment_id,
            run_name=f"trial-{record.number:03d}-{record.params['family']}",
            tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                "optuna.trial": str(record.number),
                "optuna.state": record.state,
                "optuna.study": record.study_name,
                "mlops.kind": "trial",
            },
        )
        stamp = record.finished_ms
        metrics = [
            Metric(f"cv_{self.metric}", value, stamp, step)
            for step, value in enumerate(record.fold_scores)
        ]
        if record.state == "COMPLETE":
            mean = float(np.mean(record.fold_scores))
            metrics.append(Metric(f"cv_{self.metric}_mean", mean, stamp, 0))
        metrics.append(Metric("duration_s", record.duration_s, stamp, 0))
        params = [Param(key, str(value)) for key, value in record.params.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(record.state, "FAILED")
        client.set_terminated(run.info.run_id, status=status, end_time=stamp)


def _client_after_fork(tracking_uri: str) -> MlflowClient:
    """A client whose database connections are this process's own.

    MLflow caches one store per URI, and a server database's connection pool (PostgreSQL,
    MySQL) came across the fork still holding the parent's connections; two processes must
    never share one. SQLAlchemy's `dispose(close=False)` forgets them without closing them under
    the parent. (SQLite's were closed before the fork, `ml.forking.start`; HTTP stores need
    nothing: MLflow keys its request sessions by process id.)
    """
    client = MlflowClient(tracking_uri)
    engine = tracking_store_engine(client)
    if engine is not None:
        engine.dispose(close=False)
        # A local SQLite store in WAL: MLflow's three commits per trial run no longer each
        # wait for an fsync (12.5 -> 9.9 ms of CPU per run here).
        use_wal(engine)
    return client


def tracking_store_engine(client: MlflowClient) -> Engine | None:
    """The SQLAlchemy engine of `client`'s tracking store when that is a database (SQLite,
    PostgreSQL, MySQL), else None (an HTTP server, a file store).

    MLflow has no public way to reach a client's store (3.17), and the writer process needs
    its engine: for fork safety (forget the parent's pooled connections) and for WAL (see
    `_client_after_fork`). So this is the one place MLflow's private
    `MlflowClient._tracking_client.store` is read; tests/unit/test_tracking.py fails when an
    MLflow upgrade changes it, and an attribute that moved raises here rather than silently
    giving None.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store  # pylint: disable=protected-access
    return store.engine if isinstance(store, SqlAlchemyStore) else None
