"""ml.tracking: trial runs written by a forked writer process, on a real MLflow SQLite store."""

from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

from ml.tracking import TrialTracker, tracking_store_engine


def _tracker(tmp_path, experiment_id: str | None = None) -> tuple[TrialTracker, MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_experiment = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(real_experiment).info.run_id
    tracker = TrialTracker(client, experiment_id or real_experiment, parent, "roc_auc")
    return tracker, client, real_experiment


def test_every_state_becomes_a_child_run_with_its_status(tmp_path) -> None:
    tracker, client, experiment_id = _tracker(tmp_path)
    for number, state in enumerate(("COMPLETE", "PRUNED", "FAILED")):
        tracker.log_trial(number, "s", {"family": "logreg", "C": 0.5}, [0.9, 0.8], state, 0.1)
    tracker.close()
    runs = {
        run.data.tags["optuna.state"]: run
        for run in client.search_runs([experiment_id], "tags.`mlops.kind` = 'trial'")
    }
    assert {state: run.info.status for state, run in runs.items()} == {
        "COMPLETE": "FINISHED",
        "PRUNED": "KILLED",
        "FAILED": "FAILED",
    }
    assert abs(runs["COMPLETE"].data.metrics["cv_roc_auc_mean"] - 0.85) < 1e-12
    assert "cv_roc_auc_mean" not in runs["PRUNED"].data.metrics  # no mean of a partial CV
    assert runs["PRUNED"].data.params == {"family": "logreg", "C": "0.5"}
    assert tracker.written == 3 and tracker.write_cpu_s > 0


def test_runs_that_cannot_be_written_are_reported_not_raised(tmp_path, caplog) -> None:
    """A trial run MLflow refuses (here: an experiment that does not exist) must not end the
    study; close() says how many were lost and why."""
    tracker, _, _ = _tracker(tmp_path, experiment_id="424242")
    tracker.log_trial(0, "s", {"family": "logreg", "C": 1.0}, [0.9], "COMPLETE", 0.1)
    tracker.log_trial(1, "s", {"family": "logreg", "C": 2.0}, [0.9], "COMPLETE", 0.1)
    with caplog.at_level(logging.WARNING, logger="ml.tracking"):
        tracker.close()
    assert tracker.written == 0
    assert "2 trial runs could not be logged to MLflow" in caplog.text
    assert "424242" in caplog.text


def test_a_writer_that_died_is_reported_and_close_does_not_hang(tmp_path, caplog) -> None:
    import os
    import signal

    tracker, _, _ = _tracker(tmp_path)
    os.kill(tracker._writer.pid, signal.SIGKILL)  # pylint: disable=protected-access
    tracker._writer.join()  # pylint: disable=protected-access
    tracker.log_trial(0, "s", {"family": "logreg", "C": 1.0}, [0.9], "COMPLETE", 0.1)
    with caplog.at_level(logging.WARNING, logger="ml.tracking"):
        tracker.close()
    assert "the writer process exited with code -9" in caplog.text


def test_the_writer_puts_a_local_sqlite_store_in_wal(tmp_path) -> None:
    """MLflow's commits per trial run stop waiting for fsyncs; the runs are all there.

    The writer reaches the store's engine through `tracking_store_engine`, which reads
    MLflow's private `_tracking_client.store` (no public API reaches it): an MLflow upgrade
    that moves the store or its engine fails here, loudly, instead of silently turning off
    the writer's fork safety and WAL. (One store for both checks: creating one costs seconds.)
    """
    import sqlite3

    tracker, client, experiment_id = _tracker(tmp_path)
    engine = tracking_store_engine(client)
    assert engine is not None, "MLflow's SQLite tracking store no longer has an engine"
    assert engine.url.database == str(tmp_path / "mlflow.db")  # the client's own database
    assert tracking_store_engine(MlflowClient("http://127.0.0.1:9")) is None  # no database
    tracker.log_trial(0, "s", {"family": "logreg", "C": 1.0}, [0.9, 0.8], "COMPLETE", 0.1)
    tracker.close()
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(client.search_runs([experiment_id], "tags.`mlops.kind` = 'trial'")) == 1
