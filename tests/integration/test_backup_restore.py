"""The restore drill: train and promote, back up, destroy every store, restore, and the system
is the same one: champion, its metrics, its artifact, the CT database, the telemetry counts.

Real services throughout: MLflow's SQLite store, Optuna's storage, the CT database (SQLite,
and PostgreSQL for pg_dump/pg_restore), the session's Elasticsearch with a filesystem snapshot
repository under its `path.repo`. Serving starts from the restored registry: the champion loads
with ml.predict's loader (what a replica calls) and predicts as before.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from elk.snapshot import ElasticsearchSnapshots
from elk.stack import install_templates
from ml import backup
from ml.config import Settings
from ml.data import load_frame
from ml.outcomes import OutcomeStore, PredictionRecord
from ml.predict import load_champion
from ml.storage import study_storage
from serving.main import app
from tests.fixtures.elasticsearch import ElasticsearchServer
from tests.fixtures.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
runner = CliRunner()


def _env(tmp_path: Path, es: ElasticsearchServer) -> dict[str, str]:
    repository = f"drill-{uuid.uuid4().hex[:8]}"
    return {
        "MLOPS_VAR_DIR": str(tmp_path / "var"),
        "MLOPS_BACKUP_DIR": str(tmp_path / "backups"),
        "MLOPS_MODEL_NAME": "drill-model",
        "MLOPS_TRIALS": "2",
        "MLOPS_CV_FOLDS": "2",
        "MLOPS_FAMILIES": "logreg",
        "MLOPS_DESKTOP_NOTIFICATIONS": "false",
        "ELASTICSEARCH_URL": es.url,
        "MLOPS_ELASTICSEARCH_SNAPSHOT_REPOSITORY": repository,
        "MLOPS_ELASTICSEARCH_SNAPSHOT_LOCATION": repository,
    }


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _invoke(*args: str, env: dict[str, str]) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, f"mlops {' '.join(args)}: {result.output}{result.exception!r}"
    return result.output


def _system_state(settings: Settings, rows: Any) -> dict[str, Any]:
    """What must come back: champion, its run's metrics, its artifact bytes, predictions."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    run = client.get_run(str(champion.run_id))
    artifact_files = sorted(
        (path.relative_to(settings.artifact_root).as_posix(), backup.sha256(path))
        for path in settings.artifact_root.rglob("*")
        if path.is_file()
    )
    loaded = load_champion(settings.model_name)  # what a serving replica loads
    return {
        "champion": champion.version,
        "versions": sorted(v.version for v in client.search_model_versions()),
        "metrics": run.data.metrics,
        "artifacts": artifact_files,
        "predictions": loaded.predict_frame(rows).to_dict("list"),
    }


def _ct_counts(settings: Settings) -> dict[str, int]:
    engine = sa.create_engine(settings.ct_database)
    try:
        tables = sa.inspect(engine).get_table_names()
        with engine.connect() as connection:
            return {
                table: connection.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                for table in tables
            }
    finally:
        engine.dispose()


def _record_served_predictions(settings: Settings, count: int) -> None:
    store = OutcomeStore(settings.ct_database)
    store.record_predictions(
        PredictionRecord(f"p{n}", settings.model_name, "1", {"x": n}, n % 2) for n in range(count)
    )
    store.record_feedback([(f"p{n}", n % 2) for n in range(0, count, 2)])


def _destroy_cluster(server: ElasticsearchServer) -> None:
    """Stop Elasticsearch and wipe its data: a new, empty cluster; path.repo survives."""
    server.stop()
    shutil.rmtree(Path(server.env["ES_HOME_DIR"]) / "data")
    server.start()


def test_restore_drill_brings_back_the_same_system(
    tmp_path: Path, elasticsearch_server: ElasticsearchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_templates(elasticsearch_server.client())  # as `mlops monitor setup` does
    env = _env(tmp_path, elasticsearch_server)
    settings = _settings(env, monkeypatch)
    _invoke("pipeline", env=env)  # trains, promotes v1, records the run's events in Elasticsearch
    _record_served_predictions(settings, 40)
    rows = load_frame("demo").drop(columns=["target"]).head(25)
    before = _system_state(settings, rows)
    snapshots = ElasticsearchSnapshots.from_settings(settings)
    documents = snapshots.document_counts()
    # one event per trial of this run (the session's Elasticsearch holds other tests' too)
    assert _trial_events(elasticsearch_server, settings.model_name) == 2, documents
    ct_before = _ct_counts(settings)
    assert ct_before["predictions"] == 40

    _invoke("backup", "create", env=env)
    [made] = backup.complete_backups(settings.backup_dir)  # type: ignore[arg-type]
    manifest = backup.verify(made)
    assert manifest.elasticsearch is not None
    assert manifest.elasticsearch.documents == documents

    # --- disaster: every store gone -----------------------------------------------------------
    mlflow.set_tracking_uri(None)
    shutil.rmtree(settings.var_dir)
    _destroy_cluster(elasticsearch_server)
    assert snapshots.document_counts() == {}

    _invoke("backup", "restore", str(made), env=env)
    assert _system_state(settings, rows) == before
    assert _ct_counts(settings) == ct_before
    assert snapshots.document_counts() == documents
    studies = {s.study_name: s.n_trials for s in _study_summaries(settings)}
    assert studies and all(trials == 2 for trials in studies.values())


def _trial_events(server: ElasticsearchServer, model_name: str) -> int:
    client = server.client()
    query = {"term": {"mlops.model.name": model_name}}
    return int(client.count(index="mlops-mlops.trial", query=query)["count"])


def _study_summaries(settings: Settings) -> list[Any]:
    import optuna

    return optuna.get_all_study_summaries(storage=study_storage(settings.optuna_storage))


def test_restore_refuses_a_backup_whose_snapshot_is_gone(
    tmp_path: Path, elasticsearch_server: ElasticsearchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any store is written: no store appears in var/, the message names it."""
    env = _env(tmp_path, elasticsearch_server)
    settings = _settings(env, monkeypatch)
    _record_served_predictions(settings, 3)
    (settings.var_dir / "mlflow.db").touch()  # an empty SQLite file is a valid database
    (settings.var_dir / "optuna.db").touch()
    path, manifest = backup.create(settings, ElasticsearchSnapshots.from_settings(settings))
    assert manifest.elasticsearch is not None
    ElasticsearchSnapshots.from_settings(settings).delete(manifest.elasticsearch)
    shutil.rmtree(settings.var_dir)
    result = runner.invoke(app, ["backup", "restore", str(path)], env=env)
    assert result.exit_code == 2
    assert f"{manifest.elasticsearch.snapshot}: not found" in result.output
    # Nothing restored: the command's own application log (var/log) is all that was written.
    written = {p.relative_to(settings.var_dir).parts[0] for p in settings.var_dir.rglob("*")}
    assert written <= {"log"}, written


def test_postgresql_ct_database_round_trips_through_pg_dump(
    tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump to the backup, the tables dropped, pg_restore; the password goes through
    PGPASSWORD, never into the dump."""
    url = postgres_server.create_database(f"ct_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MLOPS_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MLOPS_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("MLOPS_CT_DATABASE", url)
    settings = Settings()
    (settings.var_dir / "mlflow.db").parent.mkdir(parents=True)
    (settings.var_dir / "mlflow.db").touch()
    (settings.var_dir / "optuna.db").touch()
    _record_served_predictions(settings, 30)
    before = _ct_counts(settings)
    path, manifest = backup.create(settings)
    [dump] = [db for db in manifest.databases if db.roles == ["ct"]]
    assert (
        dump.kind == "postgresql"
        and postgres_server.password.encode() not in (path / dump.file).read_bytes()
    )
    shutil.rmtree(settings.var_dir)
    with pytest.raises(backup.BackupError, match="ct_database: the database has"):
        backup.restore(settings, path)  # the tables are still there
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for table in before:
            connection.execute(sa.text(f'DROP TABLE "{table}" CASCADE'))
    engine.dispose()
    assert _ct_counts(settings) == {}
    backup.restore(settings, path)
    assert _ct_counts(settings) == before
