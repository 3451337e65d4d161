"""Prediction telemetry and the prediction record, never on the request's critical path.

Handlers hand over one small item per request to a bounded queue (dropped and counted when
full). A daemon thread expands each into per-row ECS events (`elk.events.prediction_event`,
to the observability sink: NDJSON files by default, Elasticsearch bulk when configured) and,
when a recorder is given, into rows of the predictions/outcomes store (`ml.outcomes`), which
continuous training joins with the outcomes `/feedback` reports.

The store is written in one transaction per drain of the queue (up to `RECORD_BATCH` requests),
so a replica under load writes a few times a second, not once per row. Durability: what is
queued and not yet written (at most the queue, usually well under a second of traffic) is lost
if the replica dies; an outcome reported for such a prediction is answered as unknown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from elk.events import feedback_event, model_load_event, serving_health_event, utc_now_iso
from elk.sinks import Emitter
from ml.config import Settings
from ml.outcomes import FeedbackResult, OutcomeStore, PredictionRecord

logger = logging.getLogger("ray.serve")
QUEUE_SIZE = 10_000
# A replica's `mlops.serving_health` heartbeat: its absence is the telemetry_silent alert.
HEARTBEAT_S = 60.0
RECORD_BATCH = 256
_STOP = object()

InputRows: TypeAlias = list[dict[str, Any]] | pd.DataFrame | np.ndarray


@dataclass(frozen=True)
class ServedRequest:  # pylint: disable=too-many-instance-attributes
    """One scored request: ids, labels and class probabilities per row, and its inputs."""

    model_name: str
    model_version: str
    classes: list[Any]
    prediction_ids: Sequence[str]
    labels: Sequence[Any]
    proba: np.ndarray
    latency_ms: float
    route: str
    rows: InputRows
    columns: list[str]
    served_at: str

    def __len__(self) -> int:
        return len(self.prediction_ids)


@dataclass(frozen=True)
class RejectedRequest:
    """One request answered with a 4xx."""

    model_name: str
    model_version: str
    error: str
    latency_ms: float
    route: str

    def __len__(self) -> int:
        return 1


@dataclass(frozen=True)
class ModelLoadAttempt:
    """One attempt to load the model: "success" or "failure" (with the error)."""

    model_name: str
    model_version: str | None
    status: str
    duration_s: float
    error: str | None

    def __len__(self) -> int:
        return 1


@dataclass(frozen=True)
class ReportedOutcomes:
    """One `POST /feedback`: each outcome's id, label and whether the store took it."""

    model_name: str
    results: Sequence[FeedbackResult]
    labels: Sequence[Any]

    def __len__(self) -> int:
        return len(self.results)


Item: TypeAlias = ServedRequest | RejectedRequest | ReportedOutcomes | ModelLoadAttempt


class PredictionTelemetry:
    """Per-replica telemetry; `dropped` counts events lost here or in the sink."""

    def __init__(
        self, settings: Settings, service_name: str, recorder: OutcomeStore | None = None
    ) -> None:
        from elk.events import prediction_event
        from elk.sinks import build_emitter

        self._event = prediction_event
        self._model_name = settings.model_name
        self._next_heartbeat = 0.0  # the first drain sends one
        self._emitter: Emitter = build_emitter(settings, service_name)
        self._recorder = recorder
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._dropped_here = 0
        self.recorded = 0
        self.record_failures = 0
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="prediction-telemetry", daemon=True)
        self._worker.start()

    @property
    def dropped(self) -> int:
        return self._dropped_here + self._emitter.lost

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def predictions(
        self,
        model: Any,
        prediction_ids: Sequence[str],
        labels: Sequence[Any],
        proba: np.ndarray,
        latency_ms: float,
        route: str,
        inputs: tuple[InputRows, list[str]],
    ) -> None:
        """Queue one scored request; returns at once. `proba` has a column per class of
        `model.classes`; `inputs` (the rows, as records, a frame or a matrix, and the feature
        names) become per-row dicts on the telemetry thread."""
        rows, columns = inputs
        self._offer(
            ServedRequest(
                model_name=model.name,
                model_version=model.version,
                classes=list(model.classes),
                prediction_ids=prediction_ids,
                labels=labels,
                proba=proba,
                latency_ms=latency_ms,
                route=route,
                rows=rows,
                columns=columns,
                served_at=utc_now_iso(),  # when it was served, not when the thread gets to it
            )
        )

    def failure(self, route: str, error: Exception, started: float, served: Any) -> None:
        """One failure event for a rejected request (4xx): dashboards count bad input too."""
        loaded = getattr(served, "loaded", None)
        self._offer(
            RejectedRequest(
                model_name=getattr(loaded, "name", ""),
                model_version=getattr(loaded, "version", ""),
                error=str(error),
                latency_ms=(time.perf_counter() - started) * 1000,
                route=route,
            )
        )

    def feedback(
        self, model_name: str, results: Sequence[FeedbackResult], labels: Sequence[Any]
    ) -> None:
        """One `mlops.feedback` event per reported outcome, off the request path."""
        self._offer(ReportedOutcomes(model_name, results, labels))

    def model_load(
        self,
        model_name: str,
        model_version: str | None,
        status: str,
        duration_s: float,
        error: str | None = None,
    ) -> None:
        """One `mlops.model_load` event per load attempt (the model_load_failed alert)."""
        self._offer(ModelLoadAttempt(model_name, model_version, status, duration_s, error))

    def _offer(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._dropped_here += len(item)

    def _run(self) -> None:
        while True:
            items = self._drain()
            requests = [item for item in items if item is not _STOP]
            # Each request's rows as per-row dicts, once, for both the events and the record.
            features = [
                _records(item.rows, item.columns) if isinstance(item, ServedRequest) else []
                for item in requests
            ]
            try:
                events: list[dict[str, Any]] = []
                for item, rows in zip(requests, features):
                    events.extend(self._events(item, rows))
                events.extend(self._heartbeat())
                self._emitter.emit_many(events)
            except Exception:  # pylint: disable=broad-exception-caught
                logger.exception("prediction telemetry: could not emit an event")
            if self._recorder is not None:
                self._record(requests, features)
            if len(requests) < len(items):
                return

    def _drain(self) -> list[Any]:
        """The next item, and whatever else is already waiting (up to RECORD_BATCH)."""
        try:
            items = [self._queue.get(timeout=max(0.0, self._next_heartbeat - time.monotonic()))]
        except queue.Empty:
            return []  # time for a heartbeat, nothing waiting
        while len(items) < RECORD_BATCH and items[-1] is not _STOP:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _record(
        self,
        requests: list[Item],
        features: list[list[dict]],
    ) -> None:
        assert self._recorder is not None
        records = [
            record
            for item, rows in zip(requests, features)
            if isinstance(item, ServedRequest)
            for record in _prediction_records(item, rows)
        ]
        if not records:
            return
        try:
            self.recorded += self._recorder.record_predictions(records)
        except Exception:  # pylint: disable=broad-exception-caught
            self.record_failures += len(records)
            logger.exception("prediction record: could not write %d predictions", len(records))

    def _heartbeat(self) -> list[dict[str, Any]]:
        """The serving-health event when one is due: dropped so far and still queued."""
        if time.monotonic() < self._next_heartbeat:
            return []
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S
        return [
            serving_health_event(
                model_name=self._model_name, dropped_total=self.dropped, queued=self._queue.qsize()
            )
        ]

    def _events(self, item: Item, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(item, ModelLoadAttempt):
            return [
                model_load_event(
                    model_name=item.model_name,
                    model_version=item.model_version,
                    status=item.status,
                    duration_s=item.duration_s,
                    error=item.error,
                )
            ]
        if isinstance(item, ReportedOutcomes):
            return [
                feedback_event(
                    model_name=item.model_name,
                    prediction_id=result.prediction_id,
                    label=label,
                    stored=result.stored,
                    error=result.error,
                )
                for result, label in zip(item.results, item.labels)
            ]
        if isinstance(item, RejectedRequest):
            return [
                self._event(
                    model_name=item.model_name,
                    model_version=item.model_version,
                    prediction_id="",
                    label=None,
                    probability=0.0,
                    latency_ms=item.latency_ms,
                    route=item.route,
                    status="failure",
                    error=item.error,
                )
            ]
        return [
            self._event(
                model_name=item.model_name,
                model_version=item.model_version,
                prediction_id=prediction_id,
                label=label,
                probability=float(probability),
                latency_ms=item.latency_ms,
                route=item.route,
                features=features,
                timestamp=item.served_at,
            )
            for prediction_id, label, probability, features in zip(
                item.prediction_ids,
                item.labels,
                _confidence(item),
                rows,
            )
        ]

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain the queue into the sink (and the store) and flush it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._worker.join(timeout_s)
        self._emitter.close()


def _confidence(item: ServedRequest) -> np.ndarray:
    """The decided class's probability per row; NaN (null) for a regressor: no classes."""
    if not item.classes:
        return np.full(len(item.proba), np.nan)
    return item.proba.max(axis=1)


def _prediction_records(item: ServedRequest, rows: list[dict[str, Any]]) -> list[PredictionRecord]:
    names = [str(label) for label in item.classes]
    served_at = datetime.fromisoformat(item.served_at.replace("Z", "+00:00"))
    return [
        PredictionRecord(
            prediction_id=prediction_id,
            model_name=item.model_name,
            model_version=item.model_version,
            features=features,
            label=label,
            probabilities=dict(zip(names, row)) if names else None,  # None: a regressor
            created_at=served_at,
        )
        for prediction_id, label, row, features in zip(
            item.prediction_ids, item.labels, item.proba.tolist(), rows
        )
    ]


def _records(rows: InputRows, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as one dict per row (a matrix by plain zips: pandas' `to_dict` costs far more)."""
    if isinstance(rows, np.ndarray):
        return [dict(zip(columns, row)) for row in rows.tolist()]
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return rows
