"""Requested CT runs (`mlops ct run --force`, what `POST /admin/retrain` runs as a Ray job):
the `manual` trigger, the cooldown skipped but the lock kept, and the result kept in the CT
database under the request's id, where any replica can read it.

Real local stores (MLflow and the CT database on SQLite) and real training with a small
budget; the Ray job itself is exercised on a live cluster in tests/e2e/test_closed_loop.py.
"""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.config import Settings
from ml.retrain import CtLock, Request, lock_holder, open_state, requested_run, retrain
from serving.retrain_jobs import NICENESS, RetrainJobs, background
from tests.unit.registry_support import demo_split, register_champion, retrain_settings


@pytest.fixture(scope="module")
def demo():
    return demo_split()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return retrain_settings(tmp_path, "requested-model")


def test_a_request_trains_with_no_trigger_and_past_the_cooldown(settings: Settings, demo) -> None:
    register_champion(settings, demo)
    first = retrain(settings, request=Request("req-1", "a test"))
    assert first.outcome == "trained", first.detail
    assert [item.trigger for item in first.report.fired] == ["manual"]
    assert first.report.fired[0].evidence == {"request_id": "req-1", "requested_by": "a test"}

    second = retrain(settings, request=Request("req-2", "a test"))  # inside the cooldown
    assert second.outcome == "trained", second.detail
    assert retrain(settings).outcome == "no_trigger", "an unrequested run still needs a trigger"

    found = requested_run(settings, "req-2")
    assert found is not None
    assert (found["outcome"], found["triggers"]) == ("trained", "manual")
    assert found["trained_version"] == second.result.trained.version
    assert found["promoted"] == second.result.decision.promoted
    assert requested_run(settings, "never-asked") is None


def test_a_request_waits_for_no_lock_it_is_recorded_as_locked(settings: Settings) -> None:
    holder = CtLock(open_state(settings).engine, "the-cronjob", settings.ct_lock_stale_s)
    assert holder.acquire()[0]
    assert lock_holder(settings) == "the-cronjob"

    outcome = retrain(settings, request=Request("req-locked", "a test"))
    assert outcome.outcome == "locked" and "the-cronjob" in outcome.detail
    found = requested_run(settings, "req-locked")
    assert found is not None and found["outcome"] == "locked"


def test_a_lock_without_a_live_heartbeat_holds_nobody(settings: Settings) -> None:
    engine = open_state(settings).engine
    assert lock_holder(settings) is None
    assert CtLock(engine, "crashed", settings.ct_lock_stale_s).acquire()[0]
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE ct_lock SET heartbeat_at = :then"),
            {"then": datetime.now(UTC) - timedelta(seconds=settings.ct_lock_stale_s + 60)},
        )
    assert lock_holder(settings) is None


def test_a_database_of_an_earlier_version_gains_the_new_columns_and_keeps_its_rows(
    settings: Settings,
) -> None:
    engine = sa.create_engine(str(settings.ct_database))
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:  # ct_runs as the first CT release created it
        connection.execute(
            sa.text(
                "CREATE TABLE ct_runs (id INTEGER PRIMARY KEY, owner VARCHAR(256) NOT NULL, "
                "started_at DATETIME NOT NULL, finished_at DATETIME, outcome VARCHAR(32) NOT "
                "NULL, triggers TEXT NOT NULL, detail TEXT NOT NULL)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO ct_runs (owner, started_at, outcome, triggers, detail) "
                "VALUES ('old', '2026-01-01 00:00:00', 'trained', 'schedule', 'kept')"
            )
        )
    open_state(settings)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT owner, request_id FROM ct_runs")).all()
    assert [tuple(row) for row in rows] == [("old", None)]


def test_the_job_runs_this_python_at_idle_priority_with_the_request_id(
    settings: Settings,
) -> None:
    command = shlex.split(RetrainJobs(settings).entrypoint("retrain-abc"))
    prefix = background()
    start = command.index(prefix[0])
    assert command[start : start + len(prefix)] == prefix
    assert prefix in (["chrt", "--idle", "0"], ["nice", "-n", str(NICENESS)])
    assert command[start + len(prefix) :] == [
        sys.executable,
        "-m",
        "serving.main",
        "ct",
        "run",
        "--force",
        "--request-id",
        "retrain-abc",
    ]


def test_the_idle_prefix_really_runs_a_command_at_idle_priority() -> None:
    """What the job's shell runs: the prefix must exist on this machine and take effect."""
    import subprocess

    probe = "import os; print(os.sched_getscheduler(0) == os.SCHED_IDLE or os.nice(0) > 0)"
    ran = subprocess.run(
        [*background(), sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert ran.stdout.strip() == "True"


def test_without_a_jobs_api_retrain_answers_503_and_says_why(settings: Settings) -> None:
    """A cluster started without its dashboard has no Jobs API: a clear 503, not a 500."""

    def no_dashboard() -> object:
        raise ConnectionError("Could not read 'dashboard' from GCS")

    jobs = RetrainJobs(settings, client_factory=no_dashboard)
    for answer in (jobs.submit(), jobs.status("retrain-0123")):
        assert answer.status == 503
        assert "needs its dashboard" in answer.body["detail"]
        assert "Could not read 'dashboard'" in answer.body["detail"]
    assert jobs.status("not-a-retrain").status == 404
