"""The NDJSON sink and the emitter (no server needed: files on disk)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from elk import events
from elk.sinks import Emitter, NdjsonSink, build_emitter
from ml.config import Settings


def _prediction(number: int) -> dict[str, Any]:
    return events.prediction_event(
        model_name="m",
        model_version="1",
        prediction_id=str(number),
        label=number % 2,
        probability=0.5,
        latency_ms=1.0,
        route="/predict",
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ndjson_emitter_writes_one_file_per_dataset(tmp_path: Path) -> None:
    emitter = build_emitter(Settings(var_dir=tmp_path), "unit")
    for number in range(50):
        emitter.emit(_prediction(number))
    emitter.emit(events.stage_event(stage="data", status="success", duration_s=0.1))
    emitter.close()
    log_dir = tmp_path / "log"
    predictions = _lines(log_dir / "mlops-mlops.prediction.ndjson")
    assert [line["mlops"]["prediction"]["id"] for line in predictions] == [
        str(number) for number in range(50)
    ]
    assert all(line["service"]["name"] == "unit" for line in predictions)
    assert len(_lines(log_dir / "mlops-mlops.stage.ndjson")) == 1
    assert emitter.dropped == 0


def test_rotation_keeps_every_line_across_files(tmp_path: Path) -> None:
    sink = NdjsonSink(tmp_path, max_bytes=4096, backups=50)
    for start in range(0, 200, 10):
        sink.write([_prediction(number) for number in range(start, start + 10)])
    files = sorted(tmp_path.glob("mlops-mlops.prediction.ndjson*"))
    assert len(files) > 3  # it did rotate
    ids = sorted(int(line["mlops"]["prediction"]["id"]) for path in files for line in _lines(path))
    assert ids == list(range(200))


def test_rotation_drops_the_oldest_beyond_backups(tmp_path: Path) -> None:
    sink = NdjsonSink(tmp_path, max_bytes=4096, backups=2)
    for start in range(0, 200, 10):
        sink.write([_prediction(number) for number in range(start, start + 10)])
    names = {path.name for path in tmp_path.glob("mlops-mlops.prediction.ndjson*")}
    base = "mlops-mlops.prediction.ndjson"
    assert {f"{base}.1", f"{base}.2"} <= names <= {base, f"{base}.1", f"{base}.2"}


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    sink = NdjsonSink(tmp_path, max_bytes=64 * 1024, backups=100)

    def write(offset: int) -> None:
        for start in range(0, 300, 30):
            sink.write([_prediction(offset + n) for n in range(start, start + 30)])

    threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [
        int(line["mlops"]["prediction"]["id"])
        for path in tmp_path.glob("mlops-*")
        for line in _lines(path)
    ]
    assert sorted(ids) == sorted(offset + n for offset in (0, 1000, 2000) for n in range(300))


class _StuckSink:
    """A sink that blocks until released: the producer must still never wait."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received: list[dict[str, Any]] = []

    def write(self, batch: list[dict[str, Any]]) -> None:
        self.release.wait(30)
        self.received += batch

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_emit_never_blocks_and_counts_drops() -> None:
    sink = _StuckSink()
    emitter = Emitter(sink, "unit", queue_size=10, batch_size=1)
    for number in range(100):
        emitter.emit(_prediction(number))
    # With the sink stuck on its first event, at most 1 + 10 fit; the rest are dropped.
    assert emitter.dropped >= 100 - 11
    assert emitter.dropped + min(11, 100) >= 100
    sink.release.set()
    emitter.close()
    assert len(sink.received) + emitter.dropped == 100


def test_emit_many_is_bounded_by_events_not_chunks() -> None:
    """A chunk that does not fit is dropped whole and counted; what fits is written in order."""
    sink = _StuckSink()
    emitter = Emitter(sink, "unit", queue_size=10, batch_size=100)
    emitter.emit_many([_prediction(number) for number in range(6)])
    emitter.emit_many([_prediction(number) for number in range(6, 12)])  # 12 > 10 waiting
    emitter.emit_many([_prediction(number) for number in range(12, 16)])  # 10 waiting: fits
    assert emitter.dropped == 6
    sink.release.set()
    emitter.close()
    ids = [int(event["mlops"]["prediction"]["id"]) for event in sink.received]
    assert ids == [*range(6), *range(12, 16)]
    assert all(event["service"] == {"name": "unit"} for event in sink.received)


def test_emitter_survives_a_failing_sink(tmp_path: Path) -> None:
    class Broken(_StuckSink):
        def write(self, batch: list[dict[str, Any]]) -> None:
            raise OSError("disk on fire")

    emitter = Emitter(Broken(), "unit", flush_interval_s=0.05)
    emitter.emit(_prediction(1))
    assert emitter.flush(5)
    emitter.emit(_prediction(2))  # the thread is still alive and taking events
    assert emitter.flush(5)
    emitter.close()


def test_emit_after_close_is_a_counted_drop(tmp_path: Path) -> None:
    emitter = build_emitter(Settings(var_dir=tmp_path), "unit")
    emitter.close()
    emitter.emit(_prediction(1))
    assert emitter.dropped == 1


def test_flush_waits_for_the_sink(tmp_path: Path) -> None:
    emitter = build_emitter(Settings(var_dir=tmp_path), "unit")
    for number in range(20):
        emitter.emit(_prediction(number))
    assert emitter.flush(10)
    assert len(_lines(tmp_path / "log" / "mlops-mlops.prediction.ndjson")) == 20
    emitter.close()
    time.sleep(0)  # nothing left running: close joined the thread
    assert not emitter._thread.is_alive()  # pylint: disable=protected-access
