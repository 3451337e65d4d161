"""Back up and restore the stores the chain is rebuilt from: the MLflow tracking store, its
artifacts, the Optuna storage and the CT database (served predictions, outcomes, CT state).

A backup is a directory `<backup_dir>/<id>/`: one file per database (a SQLite file copied with
sqlite3's online backup API, so writers may go on; the Optuna journal copied under its own
lock, so it ends on a whole record; `pg_dump` for PostgreSQL), the artifact
tree, and `manifest.json` with every file's size and sha256. It is written under a temporary
name and renamed once complete, so only a whole backup carries its final name. Restore checks
every file against the manifest before it writes anything, and names the file at fault.

The Elasticsearch snapshot is elk's (`elk/snapshot.py`): the caller passes a `SnapshotTaker`
to `create` and a `SnapshotRestorer` to `restore`, so `ml` imports nothing above it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess  # nosec B404 - pg_dump/pg_restore with argument lists, no shell
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError

from ml.config import Settings
from ml.storage import is_journal, journal_locked

MANIFEST = "manifest.json"
FORMAT = 1
PARTIAL_SUFFIX = ".partial"
ARTIFACTS = "artifacts"
Role = Literal["mlflow", "optuna", "ct"]
StoreKind = Literal["sqlite", "journal", "postgresql"]


class BackupError(Exception):
    """A backup cannot be made or restored; the message names the setting or file at fault."""


# --- the manifest ------------------------------------------------------------------------------


class FileEntry(BaseModel):
    path: str
    bytes: int
    sha256: str


class DatabaseEntry(BaseModel):
    """One database file of the backup and the settings it was the store of."""

    roles: list[Role]
    kind: StoreKind
    file: str


class SnapshotEntry(BaseModel):
    """The Elasticsearch snapshot taken with the files (elk/snapshot.py fills it in)."""

    repository: str
    snapshot: str
    indices: list[str]
    data_streams: list[str] = []
    documents: dict[str, int]


class Manifest(BaseModel):
    format: int
    backup_id: str
    created: datetime
    profile: str
    var_dir: str
    databases: list[DatabaseEntry]
    artifact_root: str | None
    files: list[FileEntry]
    elasticsearch: SnapshotEntry | None = None


class SnapshotTaker(Protocol):
    def take(self, backup_id: str) -> SnapshotEntry: ...


class SnapshotRestorer(Protocol):
    def check(self, entry: SnapshotEntry) -> None: ...

    def restore(self, entry: SnapshotEntry) -> None: ...


@dataclass(frozen=True)
class Store:
    """One database to back up, and which settings name it (several may share one)."""

    url: str
    roles: tuple[Role, ...]

    @property
    def kind(self) -> StoreKind:
        return store_kind(self.url, self.roles[0])


# --- which stores --------------------------------------------------------------------------


def role_urls(settings: Settings) -> dict[Role, str]:
    return {
        "mlflow": settings.mlflow_tracking_uri,
        "optuna": settings.optuna_storage,
        "ct": settings.ct_database,
    }


ROLE_SETTING: dict[Role, str] = {
    "mlflow": "mlflow_tracking_uri",
    "optuna": "optuna_storage",
    "ct": "ct_database",
}


def store_kind(url: str, role: Role) -> StoreKind:
    """sqlite, an Optuna journal file, or postgresql; anything else (an MLflow server over
    HTTP) is refused by name."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if role == "optuna" and is_journal(url):
        return "journal"
    if url.startswith(("postgresql:", "postgresql+", "postgres:")):
        return "postgresql"
    scheme = url.split(":", 1)[0] or "(empty)"
    hint = (
        " (an MLflow server: point MLFLOW_TRACKING_URI at its backend store for the backup)"
        if scheme in ("http", "https")
        else ""
    )
    raise BackupError(f"{ROLE_SETTING[role]}: cannot back up a {scheme} store{hint}")


def stores(settings: Settings) -> list[Store]:
    """The databases to back up, one per distinct URL (PostgreSQL often holds all three)."""
    by_url: dict[str, list[Role]] = {}
    for role, url in role_urls(settings).items():
        by_url.setdefault(url, []).append(role)
    for url, roles in by_url.items():
        store_kind(url, roles[0])  # refuses a store it cannot copy before anything is written
    return [Store(url, tuple(roles)) for url, roles in by_url.items()]


def sqlite_path(url: str) -> Path:
    return Path(sa.make_url(url).database or "")


def store_file(step: RestoreStep) -> Path:
    """The file a SQLite or journal store lives in."""
    return sqlite_path(step.url) if step.kind == "sqlite" else Path(step.url)


# --- create --------------------------------------------------------------------------------


def new_backup_id(backup_dir: Path) -> str:
    """A UTC timestamp; a suffix if one of this second exists (ids sort by age)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, number = stamp, 1
    while (backup_dir / candidate).exists() or (
        backup_dir / f"{candidate}{PARTIAL_SUFFIX}"
    ).exists():
        number += 1
        candidate = f"{stamp}-{number}"
    return candidate


def create(settings: Settings, snapshot: SnapshotTaker | None = None) -> tuple[Path, Manifest]:
    """Copy every store into a new backup directory; the manifest goes in last."""
    backup_dir = backup_root(settings)
    planned = stores(settings)
    backup_dir.mkdir(parents=True, exist_ok=True)
    backup_id = new_backup_id(backup_dir)
    staging = backup_dir / f"{backup_id}{PARTIAL_SUFFIX}"
    staging.mkdir()
    try:
        databases = [_dump(store, staging, index) for index, store in enumerate(planned)]
        artifacts = settings.artifacts_on_disk
        if artifacts is not None and artifacts.is_dir():
            shutil.copytree(artifacts, staging / ARTIFACTS)
        manifest = Manifest(
            format=FORMAT,
            backup_id=backup_id,
            created=datetime.now(UTC),
            profile=settings.env,
            var_dir=str(settings.var_dir),
            databases=databases,
            artifact_root=str(artifacts) if artifacts is not None else None,
            files=[_file_entry(staging, path) for path in _files(staging)],
            elasticsearch=snapshot.take(backup_id) if snapshot is not None else None,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        final = backup_dir / backup_id
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, manifest


def backup_root(settings: Settings) -> Path:
    assert settings.backup_dir is not None  # derived in Settings
    return settings.backup_dir


def _dump(store: Store, staging: Path, index: int) -> DatabaseEntry:
    name = f"{index}-{'-'.join(store.roles)}"
    if store.kind == "sqlite":
        source = sqlite_path(store.url)
        if not source.is_file():
            raise BackupError(f"{ROLE_SETTING[store.roles[0]]}: no such SQLite file: {source}")
        file = f"{name}.db"
        _sqlite_copy(source, staging / file)
    elif store.kind == "journal":
        source = Path(store.url)
        if not source.is_file():
            raise BackupError(f"{ROLE_SETTING[store.roles[0]]}: no such journal file: {source}")
        file = f"{name}.journal"
        with journal_locked(source):  # workers may append meanwhile: copy whole records only
            shutil.copyfile(source, staging / file)
    else:
        file = f"{name}.pgdump"
        _pg(["pg_dump", "--format=custom", "--no-owner", "--file", str(staging / file)], store)
    return DatabaseEntry(roles=list(store.roles), kind=store.kind, file=file)


def _sqlite_copy(source: Path, destination: Path) -> None:
    """sqlite3's online backup: a consistent copy while other processes keep writing."""
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src:
        with closing(sqlite3.connect(destination)) as dst:
            src.backup(dst)


def _pg(command: list[str], store: Store) -> None:
    """pg_dump/pg_restore on the store's database; the password only in the environment."""
    url = sa.make_url(store.url)
    env = {
        **os.environ,
        "PGHOST": url.host or "localhost",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "",
        "PGDATABASE": url.database or "",
    }
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    tool = command[0]
    if shutil.which(tool) is None:
        raise BackupError(
            f"{ROLE_SETTING[store.roles[0]]}: PostgreSQL store, but no {tool} on PATH"
        )
    done = subprocess.run(  # nosec B603 - fixed tool, arguments from our code
        [*command, "--dbname", url.database or ""],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"{tool} of {ROLE_SETTING[store.roles[0]]} failed: {done.stderr[-2000:]}")


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def _file_entry(root: Path, path: Path) -> FileEntry:
    return FileEntry(
        path=path.relative_to(root).as_posix(), bytes=path.stat().st_size, sha256=sha256(path)
    )


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- list and prune ------------------------------------------------------------------------


def complete_backups(backup_dir: Path) -> list[Path]:
    """Backups with a manifest, oldest first (ids are UTC timestamps)."""
    if not backup_dir.is_dir():
        return []
    return sorted(
        path
        for path in backup_dir.iterdir()
        if path.is_dir() and not path.name.endswith(PARTIAL_SUFFIX) and (path / MANIFEST).is_file()
    )


def prune(settings: Settings) -> list[Manifest]:
    """Remove the oldest complete backups beyond `backup_keep`; their manifests (the caller
    deletes their snapshots)."""
    backups = complete_backups(backup_root(settings))
    removed = []
    for path in backups[: max(0, len(backups) - settings.backup_keep)]:
        removed.append(read_manifest(path))
        shutil.rmtree(path)
    return removed


# --- verify and restore --------------------------------------------------------------------


def read_manifest(backup: Path) -> Manifest:
    path = backup / MANIFEST
    if not backup.is_dir():
        raise BackupError(f"{backup}: no such backup directory")
    if not path.is_file():
        raise BackupError(f"{path}: missing: a partial backup (the manifest is written last)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise BackupError(f"{path}: not a valid manifest: {str(exc).splitlines()[0]}") from exc
    if manifest.format != FORMAT:
        raise BackupError(f"{path}: format {manifest.format}, this version reads {FORMAT}")
    return manifest


def verify(backup: Path) -> Manifest:
    """Every file the manifest lists is there with its size and sha256, and every database
    file it names is listed; else the error names the first file at fault."""
    manifest = read_manifest(backup)
    listed = {entry.path for entry in manifest.files}
    for database in manifest.databases:
        if database.file not in listed:
            raise BackupError(
                f"{backup / database.file}: named by the manifest but not checksummed"
            )
    for entry in manifest.files:
        path = backup / entry.path
        if not path.is_file():
            raise BackupError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != entry.bytes:
            raise BackupError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {entry.bytes}: truncated"
                " or changed"
            )
        if sha256(path) != entry.sha256:
            raise BackupError(f"{path}: sha256 differs from the manifest: corrupt")
    return manifest


@dataclass(frozen=True)
class RestoreStep:
    """One database file written to one target store."""

    role: Role
    url: str
    kind: StoreKind
    source: Path


def restore(
    settings: Settings,
    backup: Path,
    *,
    force: bool = False,
    snapshot: SnapshotRestorer | None = None,
) -> Manifest:
    """Verify the backup and check every target first; only then write the stores."""
    manifest = verify(backup)
    steps = _restore_steps(settings, backup, manifest)
    artifacts = _artifact_target(settings, manifest, backup)
    if not force:
        for step in steps:
            _require_empty_store(step)
        if artifacts is not None and artifacts.exists() and any(artifacts.iterdir()):
            raise BackupError(f"{artifacts}: not empty; restore into a fresh var/ or pass --force")
    if manifest.elasticsearch is not None and snapshot is not None:
        snapshot.check(manifest.elasticsearch)
    # --- nothing was written before this line ---
    for step in steps:
        _restore_database(step)
    if artifacts is not None:
        shutil.rmtree(artifacts, ignore_errors=True)
        shutil.copytree(backup / ARTIFACTS, artifacts)
    if manifest.elasticsearch is not None and snapshot is not None:
        snapshot.restore(manifest.elasticsearch)
    return manifest


def _restore_steps(settings: Settings, backup: Path, manifest: Manifest) -> list[RestoreStep]:
    """Each role's database to the store the current settings name for that role."""
    targets = role_urls(settings)
    steps: dict[str, RestoreStep] = {}
    for database in manifest.databases:
        for role in database.roles:
            url = targets[role]
            kind = store_kind(url, role)
            if kind != database.kind:
                raise BackupError(
                    f"{ROLE_SETTING[role]}: the backup holds a {database.kind} database, "
                    f"the setting names a {kind} one"
                )
            steps.setdefault(url, RestoreStep(role, url, kind, backup / database.file))
    return list(steps.values())


def _artifact_target(settings: Settings, manifest: Manifest, backup: Path) -> Path | None:
    """Where the artifacts go: the local store records absolute file URIs, so the same path."""
    if not (backup / ARTIFACTS).is_dir():
        return None
    target = settings.artifacts_on_disk
    if target is None:
        raise BackupError(
            "mlflow_artifacts_dir: the backup holds artifacts but the settings name no "
            "artifact directory (set MLOPS_MLFLOW_ARTIFACTS_DIR)"
        )
    local = any(d.kind == "sqlite" and "mlflow" in d.roles for d in manifest.databases)
    if local and manifest.artifact_root and Path(manifest.artifact_root) != target:
        raise BackupError(
            f"var_dir: the tracking store records its artifacts under {manifest.artifact_root}; "
            f"restore with MLOPS_VAR_DIR={manifest.var_dir} (the settings put them in {target})"
        )
    return target


def _require_empty_store(step: RestoreStep) -> None:
    if step.kind in ("sqlite", "journal"):
        path = store_file(step)
        if path.exists():
            setting = ROLE_SETTING[step.role]
            raise BackupError(
                f"{setting}: {path} exists; restore into a fresh var/ or pass --force"
            )
        return
    engine = sa.create_engine(step.url)
    try:
        tables = sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise BackupError(
            f"{ROLE_SETTING[step.role]}: the database has {len(tables)} tables; restore into an "
            "empty database or pass --force"
        )


def _restore_database(step: RestoreStep) -> None:
    if step.kind == "postgresql":
        command = ["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction"]
        _pg([*command, str(step.source)], Store(step.url, (step.role,)))
        return
    target = store_file(step)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}{PARTIAL_SUFFIX}")
    shutil.copyfile(step.source, partial)
    for leftover in (f"{target}-wal", f"{target}-shm"):  # an old WAL would replay onto it
        Path(leftover).unlink(missing_ok=True)
    partial.replace(target)
