"""The telemetry part of a backup: an Elasticsearch snapshot of the `mlops-*` indices.

Snapshots go to a shared-filesystem repository (`type: fs`) whose location lies under the
server's `path.repo` (scripts/elasticsearch.sh sets it). Only our indices, not the cluster's
global state: templates and dashboards come back with `mlops monitor setup`, and a restore
must not overwrite another tenant's cluster settings. `ml.backup` calls `take`, `check` and
`restore` through its `SnapshotTaker` / `SnapshotRestorer` protocols.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from elasticsearch import ApiError, Elasticsearch, NotFoundError

from elk.events import index_for
from ml.backup import BackupError, SnapshotEntry
from ml.config import Settings

log = logging.getLogger(__name__)
INDICES = index_for("*")
# Snapshots can take a while on a big cluster; the client waits for completion.
SNAPSHOT_TIMEOUT_S = 600.0


@dataclass
class ElasticsearchSnapshots:
    """Snapshots of our indices in the configured repository."""

    client: Elasticsearch
    repository: str
    location: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "ElasticsearchSnapshots":
        from elk.sinks import build_client

        return cls(
            build_client(settings, request_timeout_s=SNAPSHOT_TIMEOUT_S),
            settings.elasticsearch_snapshot_repository,
            settings.elasticsearch_snapshot_location,
        )

    def ensure_repository(self) -> None:
        """Register the fs repository (idempotent; the server checks it can write there)."""
        try:
            self.client.snapshot.create_repository(
                name=self.repository,
                repository={"type": "fs", "settings": {"location": self.location}},
            )
        except ApiError as exc:
            raise BackupError(
                f"elasticsearch_snapshot_location: repository {self.repository!r} at "
                f"{self.location!r} refused ({_reason(exc)}); is it under the server's path.repo?"
            ) from exc

    def take(self, backup_id: str) -> SnapshotEntry:
        """Snapshot our indices; fail unless every shard made it."""
        self.ensure_repository()
        documents = self.document_counts()
        name = snapshot_name(backup_id)
        answer = self.client.snapshot.create(
            repository=self.repository,
            snapshot=name,
            indices=INDICES,
            include_global_state=False,
            wait_for_completion=True,
        )
        info = answer["snapshot"]
        if info["state"] != "SUCCESS" or info["shards"]["failed"]:
            raise BackupError(f"Elasticsearch snapshot {name}: {info['state']}, {info['shards']}")
        streams = sorted(info.get("data_streams", []))
        return SnapshotEntry(
            repository=self.repository,
            snapshot=name,
            indices=sorted(info["indices"]),
            data_streams=streams,
            documents=documents,
        )

    def document_counts(self) -> dict[str, int]:
        """Documents per data stream and per index outside one, of our indices."""
        self.client.indices.refresh(index=INDICES, allow_no_indices=True)
        resolved = self.client.indices.resolve_index(name=INDICES, expand_wildcards="all")
        names = [stream["name"] for stream in resolved["data_streams"]]
        names += [index["name"] for index in resolved["indices"] if "data_stream" not in index]
        return {name: int(self.client.count(index=name)["count"]) for name in sorted(names)}

    def check(self, entry: SnapshotEntry) -> None:
        """The snapshot exists and is whole; raise naming it otherwise (nothing is changed
        but the repository registration, which a rebuilt cluster needs to see it)."""
        self.ensure_repository()
        try:
            answer = self.client.snapshot.get(repository=entry.repository, snapshot=entry.snapshot)
        except NotFoundError as exc:
            raise BackupError(
                f"Elasticsearch snapshot {entry.repository}/{entry.snapshot}: not found"
            ) from exc
        [info] = answer["snapshots"]
        if info["state"] != "SUCCESS":
            raise BackupError(
                f"Elasticsearch snapshot {entry.repository}/{entry.snapshot}: {info['state']}"
            )
        missing = sorted(set(entry.indices) - set(info["indices"]))
        if missing:
            raise BackupError(f"Elasticsearch snapshot {entry.snapshot}: lacks indices {missing}")

    def restore(self, entry: SnapshotEntry) -> None:
        """Replace our indices by the snapshot's: our templates first (a restored data stream
        needs its template to roll over), then whatever holds the names, then the snapshot."""
        from elk.stack import install_templates

        plain = [name for name in entry.indices if not name.startswith(".ds-")]
        if not plain and not entry.data_streams:
            return
        install_templates(self.client)
        self._drop_existing(entry.data_streams, plain)
        answer = self.client.snapshot.restore(
            repository=entry.repository,
            snapshot=entry.snapshot,
            indices=",".join(entry.data_streams + plain),
            include_global_state=False,
            wait_for_completion=True,
        )
        shards = answer["snapshot"]["shards"]
        if shards["failed"]:
            raise BackupError(f"Elasticsearch restore of {entry.snapshot}: {shards}")
        self.client.indices.refresh(index=INDICES, allow_no_indices=True)

    def _drop_existing(self, data_streams: list[str], plain: list[str]) -> None:
        """An open index or data stream of the same name blocks a restore."""
        resolved = self.client.indices.resolve_index(name=INDICES, expand_wildcards="all")
        for stream in resolved["data_streams"]:
            if stream["name"] not in data_streams:
                continue
            try:
                self.client.indices.delete_data_stream(name=stream["name"])
            except ApiError as exc:
                raise BackupError(
                    f"Elasticsearch data stream {stream['name']}: cannot be deleted to restore "
                    f"it ({_reason(exc)}); restore into a cluster without it"
                ) from exc
        existing = [index["name"] for index in resolved["indices"] if index["name"] in plain]
        if existing:
            self.client.indices.delete(index=",".join(existing))

    def delete(self, entry: SnapshotEntry) -> None:
        """Drop a pruned backup's snapshot; one already gone is fine."""
        try:
            self.client.snapshot.delete(repository=entry.repository, snapshot=entry.snapshot)
        except NotFoundError:
            log.info("snapshot %s was already gone", entry.snapshot)


def snapshot_name(backup_id: str) -> str:
    """Snapshot names are lower case."""
    return f"mlops-{backup_id.lower()}"


def _reason(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", {})
    if isinstance(error, dict):
        return str(error.get("reason") or error.get("type") or exc.message)
    return str(exc.message)
