"""Prediction telemetry: one ECS event per scored row, never on the request's critical path.

Handlers hand over one small tuple per request to a bounded queue (dropped and counted when
full); a daemon thread expands it into per-row events with `elk.events.prediction_event` and
passes them to the observability sink (`elk.sinks.build_emitter`: NDJSON files by default,
Elasticsearch bulk when configured), which has its own bounded, non-blocking queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from elk.events import utc_now_iso
from ml.config import Settings

logger = logging.getLogger("ray.serve")
QUEUE_SIZE = 10_000
_STOP = object()


class Emitter(Protocol):
    """What `elk.sinks.build_emitter` returns."""

    dropped: int

    def emit(self, event: dict[str, Any]) -> None: ...

    def emit_many(self, events: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class PredictionTelemetry:
    """Per-replica telemetry; `dropped` counts events lost here or in the sink."""

    def __init__(self, settings: Settings, service_name: str) -> None:
        from elk.events import prediction_event
        from elk.sinks import build_emitter

        self._event = prediction_event
        self._emitter: Emitter = build_emitter(settings, service_name)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._dropped_here = 0
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="prediction-telemetry", daemon=True)
        self._worker.start()

    @property
    def dropped(self) -> int:
        return self._dropped_here + int(getattr(self._emitter, "dropped", 0))

    def predictions(
        self,
        model: Any,
        prediction_ids: Sequence[str],
        labels: Sequence[Any],
        probabilities: Sequence[float],
        latency_ms: float,
        route: str,
        inputs: tuple[list[dict[str, Any]] | pd.DataFrame | np.ndarray, list[str]],
    ) -> None:
        """Queue the events of one scored request; returns at once. `inputs` (the rows, as
        records, a frame or a matrix, and the feature names; kept for drift checks) become
        per-row dicts on the telemetry thread."""
        self._offer(
            (
                "ok",
                model.name,
                model.version,
                prediction_ids,
                labels,
                probabilities,
                latency_ms,
                route,
                inputs,
                utc_now_iso(),  # when it was served, not when the telemetry thread gets to it
            )
        )

    def failure(self, route: str, error: Exception, started: float, served: Any) -> None:
        """One failure event for a rejected request (4xx): dashboards count bad input too."""
        latency_ms = (time.perf_counter() - started) * 1000
        loaded = getattr(served, "loaded", None)
        self._offer(
            (
                "failed",
                getattr(loaded, "name", ""),
                getattr(loaded, "version", ""),
                str(error),
                latency_ms,
                route,
            )
        )

    def _offer(self, item: tuple[Any, ...]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._dropped_here += 1 if item[0] == "failed" else len(item[3])

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._emitter.emit_many(self._events(item))
            except Exception:  # pylint: disable=broad-exception-caught
                logger.exception("prediction telemetry: could not emit an event")

    def _events(self, item: tuple[Any, ...]) -> list[dict[str, Any]]:
        if item[0] == "failed":
            _, name, version, error, latency_ms, route = item
            return [
                self._event(
                    model_name=name,
                    model_version=version,
                    prediction_id="",
                    label=None,
                    probability=0.0,
                    latency_ms=latency_ms,
                    route=route,
                    status="failure",
                    error=error,
                )
            ]
        _, name, version, ids, labels, probabilities, latency_ms, route, inputs, timestamp = item
        rows = _records(*inputs)
        return [
            self._event(
                model_name=name,
                model_version=version,
                prediction_id=prediction_id,
                label=label,
                probability=float(probability),
                latency_ms=latency_ms,
                route=route,
                features=features,
                timestamp=timestamp,
            )
            for prediction_id, label, probability, features in zip(ids, labels, probabilities, rows)
        ]

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain the queue into the sink and flush it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._worker.join(timeout_s)
        self._emitter.close()


def _records(
    rows: list[dict[str, Any]] | pd.DataFrame | np.ndarray, columns: list[str]
) -> list[dict[str, Any]]:
    """Rows as one dict per row (a matrix by plain zips: pandas' `to_dict` costs far more)."""
    if isinstance(rows, np.ndarray):
        return [dict(zip(columns, row)) for row in rows.tolist()]
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return rows
