"""ml.retrain: one CT run at a time (a lock that survives a crash), the cooldown, and a
retrain on the source plus labelled feedback, recorded on the run and the new version.

Real local stores (MLflow on SQLite, the CT database on SQLite) and real training with a
small budget; no server. The lock, `ct_runs` and cooldown tests also run, as integration tests,
on a real PostgreSQL database (`ct_database`, tests/fixtures/postgres.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from ml.config import Settings
from ml.outcomes import OutcomeStore, PredictionRecord
from ml.retrain import CtLock, ct_runs, retrain, state
from tests.unit.registry_support import demo_split, register_champion, retrain_settings


@pytest.fixture
def engine(ct_database: str) -> sa.Engine:
    store = OutcomeStore(ct_database)
    state.create_all(store.engine)
    return store.engine


def test_one_owner_at_a_time(engine: sa.Engine) -> None:
    first, second = CtLock(engine, "a", 600), CtLock(engine, "b", 600)
    assert first.acquire() == (True, "acquired")
    taken, why = second.acquire()
    assert not taken and "another CT run holds the lock: a since" in why
    # in UTC on every backend: SQLite returned a naive time, PostgreSQL the server's zone
    assert why.endswith("+00:00"), why
    first.release()
    assert second.acquire()[0]


def test_a_crashed_runs_lock_is_reclaimed_once_its_heartbeat_is_stale(engine: sa.Engine) -> None:
    crashed = CtLock(engine, "crashed", 600)
    assert crashed.acquire()[0]
    with engine.begin() as connection:  # the owner died 20 minutes ago: no heartbeat since
        connection.execute(
            sa.text("UPDATE ct_lock SET heartbeat_at = :then"),
            {"then": datetime.now(UTC) - timedelta(minutes=20)},
        )
    assert CtLock(engine, "next", 600).acquire() == (True, "reclaimed a stale lock of crashed")
    assert not crashed.acquire()[0], "the old owner must not take it back"


def test_a_live_heartbeat_keeps_the_lock(engine: sa.Engine) -> None:
    # 20 heartbeats a stale period: a loaded 2-core machine may delay some, not twenty
    holder = CtLock(engine, "holder", stale_after_s=1.0)
    with holder.held(every_s=0.05) as (acquired, _):
        assert acquired
        deadline = datetime.now(UTC) + timedelta(seconds=3.0)
        while datetime.now(UTC) < deadline:  # three stale periods, heartbeats all along
            assert not CtLock(engine, "other", stale_after_s=1.0).acquire()[0]
    assert CtLock(engine, "other", stale_after_s=1.0).acquire()[0], "released after the block"


@pytest.fixture(scope="module")
def demo():
    return demo_split()


def _settings(tmp_path: Path, **more: object) -> Settings:
    return retrain_settings(tmp_path, "retrain-model", **more)


def test_no_trigger_trains_nothing_and_says_so(tmp_path: Path, demo) -> None:
    settings = _settings(tmp_path)
    register_champion(settings, demo)
    outcome = retrain(settings)
    assert (outcome.outcome, outcome.detail) == ("no_trigger", "no trigger fired")
    assert outcome.result is None
    versions = MlflowClient().search_model_versions(f"name='{settings.model_name}'")
    assert len(versions) == 1


def test_a_fired_trigger_retrains_records_why_and_then_cools_down(
    tmp_path: Path, demo, ct_database: str
) -> None:
    # the champion is already too old
    settings = _settings(tmp_path, ct_max_age_h=1e-6, ct_database=ct_database)
    champion, _ = register_champion(settings, demo)
    outcome = retrain(settings)
    assert outcome.outcome == "trained", outcome.detail
    result = outcome.result
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["ct.triggers"] == "schedule"
    assert run.data.tags["ct.previous_champion"] == champion
    assert "champion_age_h" in run.data.tags["ct.evidence"]
    version = MlflowClient().get_model_version(settings.model_name, result.trained.version)
    assert version.tags["ct.source_fingerprint"] == result.report.fingerprint
    assert version.tags["gate.decision"] in {"promoted", "rejected"}

    again = retrain(settings)
    assert again.outcome == "cooling_down" and "next may start at" in again.detail
    assert again.detail.endswith("+00:00"), "times in UTC, whatever the database server's zone"
    with OutcomeStore(settings.ct_database).engine.connect() as connection:
        outcomes = connection.execute(sa.select(ct_runs.c.outcome)).scalars().all()
    assert outcomes == ["trained", "cooling_down"]


def test_a_performance_drop_retrains_on_the_labelled_feedback(tmp_path: Path, demo) -> None:
    """With the source unchanged, the retrain must see what the outcomes say: the labelled
    predictions join the training data."""
    settings = _settings(tmp_path, ct_min_labels=50)
    _, model = register_champion(settings, demo)
    holdout = demo[1].X_holdout
    store = OutcomeStore(settings.ct_database)
    classes = list(model.classes_)
    proba = model.predict_proba(holdout)
    store.record_predictions(
        PredictionRecord(
            f"p{i}",
            settings.model_name,
            "1",
            row,
            classes[p_row.argmax()],
            dict(zip(map(str, classes), p_row)),
        )
        for i, (row, p_row) in enumerate(zip(holdout.to_dict("records"), proba))
    )
    truth = [classes[1 - classes.index(label)] for label in model.predict(holdout)]
    store.record_feedback([(f"p{i}", label) for i, label in enumerate(truth)])

    outcome = retrain(settings)
    assert outcome.outcome == "trained", outcome.detail
    assert [item.trigger for item in outcome.report.fired] == ["performance"]
    assert outcome.feedback_rows == len(holdout)
    assert outcome.result.report.rows == len(demo[0].X) + len(holdout)
    run = MlflowClient().get_run(outcome.result.run_id)
    assert run.data.tags["ct.feedback_rows"] == str(len(holdout))


def test_mlops_ct_run_exits_0_when_nothing_fires(tmp_path: Path, demo) -> None:
    from typer.testing import CliRunner

    from serving.main import app

    settings = _settings(tmp_path)
    register_champion(settings, demo)
    env = {"MLOPS_VAR_DIR": str(settings.var_dir), "MLOPS_MODEL_NAME": settings.model_name}
    result = CliRunner().invoke(app, ["ct", "run"], env=env)
    assert result.exit_code == 0, result.output
    assert "ct run: no_trigger: no trigger fired" in result.stdout
    assert (Path(settings.log_dir) / "mlops-mlops.ct.ndjson").read_text().count("\n") == 4


def test_feedback_rows_join_the_source_as_loaded_so_the_types_stay_raw(tmp_path: Path) -> None:
    """A retrain's data is the raw source plus the raw served records: a yes/no column stays a
    boolean feature of strings (the new version's signature describes what users send), not the
    0.0/1.0 the first version's coercion made of it."""
    from ml.data import validate
    from ml.retrain import training_data

    rng = np.random.default_rng(0)
    rows = 60
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["yes", "no"], rows),
            "calls": rng.integers(0, 9, rows),
            "minutes": rng.normal(100, 20, rows).round(1),
            "churn": rng.choice(["TRUE", "FALSE"], rows),
        }
    )
    source = validate(frame, "churn", source="churn.csv", cv_folds=3, test_size=0.2)
    settings = _settings(tmp_path, ct_min_labels=5)
    store = OutcomeStore(settings.ct_database)
    served = frame.drop(columns="churn").head(8).to_dict("records")
    ids = [f"p{i}" for i in range(len(served))]
    store.record_predictions(
        PredictionRecord(pid, settings.model_name, "1", record, "TRUE")
        for pid, record in zip(ids, served)
    )
    store.record_feedback([(pid, "FALSE") for pid in ids])

    dataset, from_feedback = training_data(settings, store, source)

    assert from_feedback == len(ids) and len(dataset.X) == rows + len(ids)
    assert dataset.feature_types == source.feature_types
    assert dataset.raw_features is not None
    assert set(dataset.raw_features["plan"]) == {"yes", "no"}
