"""Where telemetry goes: NDJSON files for Filebeat, or Elasticsearch bulk with a disk spool.

`build_emitter(settings, service_name)` is what producers use: `Emitter.emit(event)` only puts
the event on a bounded in-memory queue (a full queue drops and counts, it never waits), and one
background thread hands batches to the sink. The Elasticsearch sink writes `create` operations
with `_id = event.id`, spools whatever Elasticsearch did not acknowledge to disk while it is
unreachable and replays the spool when it answers again: a replayed document that had in fact
arrived is answered 409 and counted as a duplicate, so nothing is lost and nothing is doubled.
The spool is bounded (`max_spool_bytes`, all files of the directory together): past the bound
new events are refused and counted in `failed` (refuse-new: what is spooled is the oldest and
stays in order; /health reports the count as telemetry_dropped).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.helpers import streaming_bulk

from elk.events import dataset_of, event_id, index_for
from ml.config import Settings

log = logging.getLogger(__name__)

NDJSON_SUFFIX = ".ndjson"
# Per-document statuses worth retrying later: the cluster was busy or not fully up.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
CONFLICT = 409
PROBE_TIMEOUT_S = 2.0


class Sink(Protocol):
    """What the emitter's thread calls; none of these may raise for a delivery problem."""

    def write(self, events: list[dict[str, Any]]) -> None:
        """Deliver (or keep for later) one batch."""

    def tick(self) -> None:
        """Called when the queue is idle."""

    def close(self) -> None:
        """Flush what can be flushed."""


def dumps(event: dict[str, Any]) -> str:
    """Compact JSON, one line (orjson: every served row becomes an event, so this is hot)."""
    return orjson.dumps(event, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# --- NDJSON files ------------------------------------------------------------------------------


class NdjsonSink:
    """One append-only file per dataset (`<log_dir>/mlops-<dataset>.ndjson`), rotated by size.

    Several processes (serving replicas, the host collector) may write the same file: each batch
    is one `write()` on an `O_APPEND` descriptor under an exclusive `flock`, so lines never
    interleave, and rotation happens under the same lock.
    """

    def __init__(self, log_dir: Path, max_bytes: int = 50 * 1024 * 1024, backups: int = 5):
        self.log_dir = Path(log_dir)
        self.max_bytes = max_bytes
        self.backups = backups
        self.written = 0
        self.failed = 0
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, dataset: str) -> Path:
        """The current file of a dataset."""
        return self.log_dir / f"{index_for(dataset)}{NDJSON_SUFFIX}"

    def write(self, events: list[dict[str, Any]]) -> None:
        by_dataset: dict[str, list[str]] = defaultdict(list)
        for event in events:
            by_dataset[dataset_of(event)].append(dumps(event))
        for dataset, lines in by_dataset.items():
            try:
                self._append(self.path_for(dataset), ("\n".join(lines) + "\n").encode())
                self.written += len(lines)
            except OSError as exc:
                self.failed += len(lines)
                log.error("telemetry: cannot write %s: %s", self.path_for(dataset), exc)

    def _append(self, path: Path, payload: bytes) -> None:
        while True:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, path):  # rotated by another process meanwhile
                    continue
                _write_whole(fd, payload)
                if os.fstat(fd).st_size >= self.max_bytes:
                    self._rotate(path)
                return
            finally:
                os.close(fd)

    def _rotate(self, path: Path) -> None:
        """`x.ndjson` -> `x.ndjson.1` -> ... -> `x.ndjson.<backups>` (the oldest is removed)."""
        oldest = path.with_name(f"{path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for number in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{number}")
            if older.exists():
                older.rename(path.with_name(f"{path.name}.{number + 1}"))
        path.rename(path.with_name(f"{path.name}.1"))

    def tick(self) -> None:
        """Nothing to do between batches."""

    def close(self) -> None:
        """Every batch is written through; nothing is buffered."""


def _write_whole(fd: int, payload: bytes) -> None:
    """All of `payload` or nothing: on a full disk `write()` can store part of it and return
    the count, which would leave a torn last line for Filebeat. The part is cut off again (the
    caller holds the file's lock) and the batch counts as failed."""
    size = os.fstat(fd).st_size
    try:
        written = os.write(fd, payload)
    except OSError:
        os.ftruncate(fd, size)
        raise
    if written != len(payload):
        os.ftruncate(fd, size)
        raise OSError(errno.ENOSPC, f"short write: {written} of {len(payload)} bytes")


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


# --- Elasticsearch bulk ------------------------------------------------------------------------


def build_client(settings: Settings, request_timeout_s: float = 10.0) -> Elasticsearch:
    """A client for `settings.elasticsearch_url`; it does not retry itself, the spool does."""
    if not settings.elasticsearch_url:
        raise ValueError("elasticsearch_url: not set (ELASTICSEARCH_URL)")
    options: dict[str, Any] = {
        "request_timeout": request_timeout_s,
        "max_retries": 0,
        "retry_on_timeout": False,
    }
    if settings.elasticsearch_api_key is not None:
        options["api_key"] = settings.elasticsearch_api_key.get_secret_value()
    elif settings.elasticsearch_username:
        password = settings.elasticsearch_password
        options["basic_auth"] = (
            settings.elasticsearch_username,
            password.get_secret_value() if password else "",
        )
    return Elasticsearch(settings.elasticsearch_url, **options)


@dataclass
class BulkOutcome:
    """What one bulk pass did; `unsent` must be tried again later."""

    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    unsent: list[dict[str, Any]] = field(default_factory=list)


def bulk_actions(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`create` operations with deterministic ids (required by data streams, safe on indices)."""
    for event in events:
        yield {
            "_op_type": "create",
            "_index": index_for(dataset_of(event)),
            "_id": event_id(event),
            "_source": event,
        }


def ship(
    client: Elasticsearch,
    events: list[dict[str, Any]],
    chunk_size: int = 2000,
    parallel: int = 2,
) -> BulkOutcome:
    """Bulk-create `events`; whatever was not acknowledged (connection lost, 5xx) is `unsent`.

    `parallel` chunks are in flight at once, so the client serialises the next chunk while the
    server indexes the last one (measured in benchmarks/telemetry.py). After the first failed
    chunk the remaining ones are not tried: they are `unsent` at once.
    """
    chunks = [events[start : start + chunk_size] for start in range(0, len(events), chunk_size)]
    failed = threading.Event()

    def one(chunk: list[dict[str, Any]]) -> BulkOutcome:
        if failed.is_set():
            return BulkOutcome(unsent=chunk)
        result = _ship_chunk(client, chunk)
        if result.unsent:
            failed.set()
        return result

    if parallel > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="bulk") as pool:
            outcomes = list(pool.map(one, chunks))
    else:
        outcomes = [one(chunk) for chunk in chunks]
    total = BulkOutcome()
    for outcome in outcomes:
        total.delivered += outcome.delivered
        total.duplicates += outcome.duplicates
        total.rejected += outcome.rejected
        total.unsent += outcome.unsent
    return total


def _ship_chunk(client: Elasticsearch, events: list[dict[str, Any]]) -> BulkOutcome:
    """One bulk request (429s retried per document by the helper)."""
    outcome = BulkOutcome()
    settled: set[str] = set()
    try:
        results = streaming_bulk(
            client,
            bulk_actions(events),
            chunk_size=len(events),
            max_chunk_bytes=100 * 1024 * 1024,
            max_retries=2,
            initial_backoff=0.5,
            raise_on_error=False,
            raise_on_exception=True,
            yield_ok=True,
        )
        for ok, item in results:
            info = item.get("create", {})
            status = int(info.get("status", 0))
            if ok:
                outcome.delivered += 1
            elif status == CONFLICT:
                outcome.duplicates += 1
            elif status in RETRYABLE_STATUSES:
                continue  # left unsettled: it goes back to the spool
            else:
                outcome.rejected += 1
                log.error(
                    "telemetry: Elasticsearch rejected %s: %s", info.get("_id"), info.get("error")
                )
            settled.add(str(info.get("_id")))
    except (TransportError, ApiError) as exc:
        log.warning("telemetry: Elasticsearch unreachable (%s); spooling", type(exc).__name__)
    outcome.unsent = [event for event in events if event_id(event) not in settled]
    return outcome


class ElasticsearchSink:
    """Bulk into Elasticsearch; spool to `spool_dir` while it is down; replay when it is back.

    The spool is NDJSON files, one per writing process, each held under an exclusive `flock`
    while its owner appends, so a replaying process never takes a file that is still growing.
    """

    def __init__(
        self,
        client: Elasticsearch,
        spool_dir: Path,
        service_name: str = "mlops",
        retry_after_s: float = 5.0,
        chunk_size: int = 2000,
        max_spool_bytes: int = 256 * 1024 * 1024,
    ):
        self.client = client
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.retry_after_s = retry_after_s
        self.chunk_size = chunk_size
        self.delivered = 0
        self.duplicates = 0
        self.rejected = 0
        self.spooled = 0
        self.failed = 0  # refused: the spool was at its bound (Emitter.lost counts them)
        self.max_spool_bytes = max_spool_bytes
        self._prefix = f"{service_name}-{os.getpid()}-"
        self._spool_fd: int | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        """True while the last attempt failed and the retry interval has not passed."""
        return time.monotonic() < self._retry_at

    def write(self, events: list[dict[str, Any]]) -> None:
        if self.down:
            self._spool(events)
            return
        if self._spool_fd is not None or self._spool_files():
            self.replay()
        if self.down:
            self._spool(events)
            return
        unsent = self._ship(events)
        if unsent:
            self._spool(unsent)

    def tick(self) -> None:
        """Called when the queue is idle: replay the spool once Elasticsearch may be back."""
        if not self.down and (self._spool_fd is not None or self._spool_files()):
            self.replay()

    def close(self) -> None:
        """Last replay attempt; what is still spooled stays on disk for the next process."""
        self._retry_at = 0.0
        self.tick()
        self._release_spool()

    def replay(self) -> None:
        """Ship every spool file nobody is writing; stop at the first failure."""
        self._release_spool()
        if not self._reachable():
            self._retry_at = time.monotonic() + self.retry_after_s
            return
        for path in self._spool_files():
            if not self._replay_file(path):
                return

    def _reachable(self) -> bool:
        """A cheap probe with a short timeout, so a server still starting up cannot hold the
        emitter's thread for a whole bulk timeout while the queue fills."""
        try:
            self.client.options(request_timeout=PROBE_TIMEOUT_S).cluster.health()
            return True
        except (TransportError, ApiError):
            return False

    def _ship(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outcome = ship(self.client, events, self.chunk_size)
        self.delivered += outcome.delivered
        self.duplicates += outcome.duplicates
        self.rejected += outcome.rejected
        if outcome.unsent:
            self._retry_at = time.monotonic() + self.retry_after_s
        return outcome.unsent

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob(f"*{NDJSON_SUFFIX}"), key=_mtime)

    def spool_bytes(self) -> int:
        """What every spool file of the directory holds now (other processes' included)."""
        total = 0
        for path in self.spool_dir.glob(f"*{NDJSON_SUFFIX}"):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue  # replayed and removed meanwhile
        return total

    def _spool(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        payload = "".join(dumps(event) + "\n" for event in events).encode()
        if self.spool_bytes() + len(payload) > self.max_spool_bytes:
            if not self.failed:
                log.error(
                    "telemetry: spool %s is at its bound (%d bytes): new events are dropped "
                    "and counted until Elasticsearch takes the spooled ones",
                    self.spool_dir,
                    self.max_spool_bytes,
                )
            self.failed += len(events)
            return
        if self._spool_fd is None:
            path = self.spool_dir / f"{self._prefix}{time.time_ns()}{NDJSON_SUFFIX}"
            self._spool_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(self._spool_fd, fcntl.LOCK_EX)
        os.write(self._spool_fd, payload)
        self.spooled += len(events)

    def _release_spool(self) -> None:
        if self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None

    def _replay_file(self, path: Path) -> bool:
        """True when the file was fully settled (and removed)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True  # another process replayed it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # its writer is alive and still appending
            if not _same_file(fd, path):
                return True
            events = list(_read_events(fd, path))
            unsent = self._ship(events) if events else []
            if not unsent:
                path.unlink(missing_ok=True)
                return True
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, "".join(dumps(event) + "\n" for event in unsent).encode())
            return False
        finally:
            os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _read_events(fd: int, path: Path) -> Iterator[dict[str, Any]]:
    with os.fdopen(os.dup(fd), "r", encoding="utf-8") as handle:
        handle.seek(0)
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.error("telemetry: %s line %d is not JSON (torn write?); skipped", path, number)


# --- the emitter -------------------------------------------------------------------------------


class Emitter:
    """Non-blocking hand-off from producers to a sink running on one background thread.

    Events travel in chunks (`emit_many`: a served request's rows are one queue item, not one
    lock round trip each); `queue_size` bounds the events waiting, whatever their chunking.
    """

    def __init__(
        self,
        sink: Sink,
        service_name: str,
        queue_size: int = 10_000,
        batch_size: int = 4000,
        flush_interval_s: float = 1.0,
    ):
        self.sink = sink
        self.service_name = service_name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.dropped = 0  # not queued: the queue was full or the emitter closed
        self.emitted = 0
        self._waiting = 0  # events queued and not yet written
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"telemetry-{service_name}", daemon=True
        )
        self._thread.start()

    @property
    def lost(self) -> int:
        """Events that will never arrive: dropped here, or failed in the sink (a full disk
        under the NDJSON files)."""
        return self.dropped + int(getattr(self.sink, "failed", 0))

    def emit(self, event: dict[str, Any]) -> None:
        """Queue `event` for the sink; never blocks: a full queue (or a closed emitter) drops."""
        self.emit_many([event])

    def emit_many(self, events: list[dict[str, Any]]) -> None:
        """Queue `events` as one chunk; never blocks. All of them are dropped (and counted)
        when they do not fit in the queue or the emitter is closed."""
        with self._lock:
            if self._closed or self._waiting + len(events) > self.queue_size:
                self.dropped += len(events)
                return
            self._waiting += len(events)
        for event in events:
            if "service" not in event:
                event["service"] = {"name": self.service_name}
        self._queue.put_nowait(events)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued event reached the sink (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued, stop the thread, close the sink."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self.flush_interval_s)
            except queue.Empty:
                self._safely(self.sink.tick)
                continue
            batch, chunks, stopping = self._collect(first)
            if batch:
                self._safely(self.sink.write, batch)
                self.emitted += len(batch)
                with self._lock:
                    self._waiting -= len(batch)
            for _ in range(chunks):
                self._queue.task_done()
        self._safely(self.sink.close)

    def _collect(
        self, first: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Queued chunks up to about `batch_size` events: (events, chunks taken, whether the
        close sentinel was among them)."""
        if first is None:
            return [], 1, True
        batch, chunks = list(first), 1
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            chunks += 1
            if item is None:
                return batch, chunks, True
            batch.extend(item)
        return batch, chunks, False

    @staticmethod
    def _safely(call: Callable[..., None], *args: object) -> None:
        """The telemetry thread must survive anything a sink does."""
        try:
            call(*args)
        except Exception:  # pylint: disable=broad-exception-caught
            log.exception("telemetry: sink failed")


def build_sink(settings: Settings, service_name: str) -> Sink:
    """Elasticsearch bulk when `elasticsearch_url` is set, else NDJSON files under `log_dir`."""
    log_dir = Path(settings.log_dir or settings.var_dir / "log")
    if settings.elasticsearch_url:
        return ElasticsearchSink(
            build_client(settings),
            log_dir / "spool",
            service_name,
            max_spool_bytes=settings.telemetry_spool_max_bytes,
        )
    return NdjsonSink(log_dir, settings.log_max_bytes, settings.log_backups)


def build_emitter(settings: Settings, service_name: str) -> Emitter:
    """The emitter producers use; see the module docstring."""
    return Emitter(
        build_sink(settings, service_name), service_name, queue_size=settings.telemetry_queue_size
    )
