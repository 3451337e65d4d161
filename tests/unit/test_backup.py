"""ml.backup without servers: SQLite stores, an Optuna journal and an artifact tree in a
temporary var/.

A corrupt, truncated or partial backup is refused before anything is written, naming the file
at fault; a live SQLite writer does not spoil the copy; retention keeps the newest backups.
The restore drill with MLflow, Optuna, the CT database and Elasticsearch is
tests/integration/test_backup_restore.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import optuna
import pytest

from ml import backup
from ml.config import Settings
from ml.storage import journal_locked, study_storage


def _settings(root: Path, **extra: str) -> Settings:
    return Settings(var_dir=root / "var", backup_dir=root / "backups", **extra)


def _sqlite(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(rows)])
        connection.commit()


def _journal(location: str, trials: int) -> None:
    """A real Optuna journal with one study of `trials` finished trials."""
    study = optuna.create_study(study_name="s", storage=study_storage(location))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=trials)


def _trials(location: str) -> int:
    return len(optuna.load_study(study_name="s", storage=study_storage(location)).trials)


def _rows(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as connection:
        return [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")]


@pytest.fixture
def populated(tmp_path: Path) -> Settings:
    """A var/ with SQLite MLflow and CT stores, the studies in a journal file (the opt-in
    single-host storage), and two artifact files."""
    settings = _settings(tmp_path, optuna_storage=str(tmp_path / "var" / "optuna.journal"))
    _sqlite(settings.var_dir / "mlflow.db", 3)
    _journal(settings.optuna_storage, 4)
    _sqlite(settings.var_dir / "ct.db", 5)
    model = settings.artifact_root / "1" / "abc" / "artifacts" / "model"
    model.mkdir(parents=True)
    (model / "model.skops").write_bytes(b"\x00model bytes" * 100)
    (model / "MLmodel").write_text("flavors: {}\n")
    return settings


def _wipe(settings: Settings) -> None:
    import shutil

    shutil.rmtree(settings.var_dir)


def test_round_trip_restores_every_store_into_a_fresh_var(populated: Settings) -> None:
    path, manifest = backup.create(populated)
    assert path.name == manifest.backup_id and (path / backup.MANIFEST).is_file()
    assert {role for db in manifest.databases for role in db.roles} == {"mlflow", "optuna", "ct"}
    assert sum(entry.path.startswith("artifacts/") for entry in manifest.files) == 2
    _wipe(populated)
    backup.restore(populated, path)
    assert _rows(populated.var_dir / "mlflow.db") == [0, 1, 2]
    assert _trials(populated.optuna_storage) == 4
    assert _rows(populated.var_dir / "ct.db") == [0, 1, 2, 3, 4]
    restored = populated.artifact_root / "1" / "abc" / "artifacts" / "model" / "model.skops"
    assert restored.read_bytes() == b"\x00model bytes" * 100


def test_sqlite_copy_is_consistent_while_a_writer_holds_a_transaction(
    populated: Settings,
) -> None:
    """The online backup API copies the committed state; an open write is not in it."""
    db = populated.var_dir / "ct.db"
    with closing(sqlite3.connect(db)) as writer:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (99)")
        path, _ = backup.create(populated)
        writer.commit()
    [ct_file] = [db.file for db in backup.verify(path).databases if "ct" in db.roles]
    assert _rows(path / ct_file) == [0, 1, 2, 3, 4]


def test_journal_copy_ends_on_a_whole_record_while_a_worker_appends(populated: Settings) -> None:
    """The copy waits for the journal's lock, as Optuna's own appends do: a record half
    written under the lock is whole in the backup."""
    journal = Path(populated.optuna_storage)
    record = journal.read_bytes().splitlines(keepends=True)[-1]
    created: list[Path] = []
    with journal_locked(journal):
        with journal.open("ab") as appending:
            appending.write(record[:10])
            appending.flush()
            worker = threading.Thread(target=lambda: created.append(backup.create(populated)[0]))
            worker.start()
            worker.join(timeout=1)  # time for a copy that ignored the lock to take the half
            appending.write(record[10:])
    worker.join()
    [optuna_file] = [db.file for db in backup.verify(created[0]).databases if "optuna" in db.roles]
    assert (created[0] / optuna_file).read_bytes() == journal.read_bytes()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("flip a byte of a database", "sha256 differs"),
        ("truncate an artifact", "truncated"),
        ("delete a database file", "missing"),
        ("delete the manifest", "partial backup"),
        ("garble the manifest", "not a valid manifest"),
    ],
)
def test_a_damaged_backup_is_refused_before_anything_is_written(
    populated: Settings, damage: str, expected: str
) -> None:
    path, manifest = backup.create(populated)
    database = path / manifest.databases[0].file
    artifact = next(path / e.path for e in manifest.files if e.path.endswith("model.skops"))
    at_fault = {
        "flip a byte of a database": database,
        "truncate an artifact": artifact,
        "delete a database file": database,
        "delete the manifest": path / backup.MANIFEST,
        "garble the manifest": path / backup.MANIFEST,
    }[damage]
    if damage.startswith("flip"):
        _corrupt(database)
    elif damage.startswith("truncate"):
        artifact.write_bytes(artifact.read_bytes()[:-10])
    elif damage.startswith("delete"):
        at_fault.unlink()
    else:
        at_fault.write_text('{"format": 1, "backup_id": ')
    _wipe(populated)
    with pytest.raises(backup.BackupError) as refused:
        backup.restore(populated, path)
    assert str(at_fault) in str(refused.value) and expected in str(refused.value)
    assert not populated.var_dir.exists(), "a refused restore wrote something"


def test_an_interrupted_backup_leaves_no_directory_that_looks_complete(
    populated: Settings,
) -> None:
    class FailingSnapshot:
        def take(self, backup_id: str) -> backup.SnapshotEntry:
            raise RuntimeError("Elasticsearch went away")

    with pytest.raises(RuntimeError):
        backup.create(populated, FailingSnapshot())
    assert not any(populated.backup_dir.iterdir())  # type: ignore[union-attr]


def test_restore_refuses_existing_stores_unless_forced(populated: Settings) -> None:
    path, _ = backup.create(populated)
    _sqlite(populated.var_dir / "mlflow.db", 2)  # written after the backup
    with pytest.raises(backup.BackupError, match="mlflow_tracking_uri: .*mlflow.db exists"):
        backup.restore(populated, path)
    assert _rows(populated.var_dir / "mlflow.db") == [0, 0, 1, 1, 2]
    backup.restore(populated, path, force=True)
    assert _rows(populated.var_dir / "mlflow.db") == [0, 1, 2]


def test_restore_into_another_var_dir_is_refused_for_a_local_store(
    populated: Settings, tmp_path: Path
) -> None:
    """The SQLite tracking store records absolute artifact URIs: same path, or broken links."""
    path, _ = backup.create(populated)
    elsewhere = Settings(
        var_dir=tmp_path / "other-var",
        backup_dir=tmp_path / "backups",
        optuna_storage=str(tmp_path / "other-var" / "optuna.journal"),  # as populated's kind
    )
    with pytest.raises(backup.BackupError, match=f"MLOPS_VAR_DIR={populated.var_dir}"):
        backup.restore(elsewhere, path)
    assert not elsewhere.var_dir.exists()


def test_stores_it_cannot_copy_are_named(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, mlflow_tracking_uri="http://mlflow:5000", optuna_storage="sqlite:///x.db"
    )
    with pytest.raises(backup.BackupError, match="mlflow_tracking_uri: .*http.*backend store"):
        backup.create(settings)
    missing = _settings(tmp_path)
    with pytest.raises(backup.BackupError, match="mlflow_tracking_uri: no such SQLite file"):
        backup.create(missing)
    assert not any(missing.backup_dir.iterdir())  # type: ignore[union-attr]


def test_one_postgresql_database_for_all_roles_is_dumped_once(tmp_path: Path) -> None:
    url = "postgresql+psycopg://mlflow:secret@db:5432/mlflow"
    settings = _settings(tmp_path, mlflow_tracking_uri=url, ct_database=url)
    database, studies = backup.stores(settings)
    assert database.kind == "postgresql" and database.roles == ("mlflow", "ct")
    # the studies never share MLflow's database (both keep an alembic_version table)
    assert studies.kind == "sqlite" and studies.roles == ("optuna",)


def test_retention_keeps_the_newest(populated: Settings) -> None:
    settings = populated.model_copy(update={"backup_keep": 2})
    made = [backup.create(settings)[0] for _ in range(3)]
    (settings.backup_dir / "20000101T000000Z.partial").mkdir()  # type: ignore[operator]
    removed = backup.prune(settings)
    assert [m.backup_id for m in removed] == [made[0].name]
    assert backup.complete_backups(settings.backup_dir) == made[1:]  # type: ignore[arg-type]


def test_manifest_lists_every_file_with_its_checksum(populated: Settings) -> None:
    path, _ = backup.create(populated)
    listed = json.loads((path / backup.MANIFEST).read_text())["files"]
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert sorted(entry["path"] for entry in listed) == [
        name for name in on_disk if name != backup.MANIFEST
    ]
    for entry in listed:
        assert backup.sha256(path / entry["path"]) == entry["sha256"]
