"""The scheduler: which requests are scored alone and which are merged into one model call.

Scoring has three paths, picked per request, all running the model in a worker thread:
- alone (nothing else in flight): scored at once, no batching wait (concurrency 1 latency);
- concurrent small requests: they wait while the model is busy, then the batch function
  merges them into one `predict_proba` call (a forest costs about the same for 1 row as for
  64, so this is the throughput lever);
- large requests (more rows than a batch): validated and scored on their own.

The batch function is injected: in a replica it is a `@serve.batch` method that hands the
requests it gathered to `Scheduler.score_batch`. (`serve.batch` cannot be used here: its queue
asks for the Serve replica context when created, so it fails outside a replica.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from serving.model import Rows, Scored
from serving.schemas import RequestError
from serving.service import ModelService

P = ParamSpec("P")
T = TypeVar("T")
# One request's rows -> its result, gathered into `Scheduler.score_batch` with others.
BatchFunction = Callable[[Rows], Awaitable[Scored | RequestError]]


class IdleGate:
    """Open while no model work runs; model work may overlap (a batch and a solo request)."""

    def __init__(self) -> None:
        self._runs = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait(self) -> None:
        """Until no model work runs."""
        await self._idle.wait()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Closed while the body runs model work."""
        self._runs += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._runs -= 1
            if not self._runs:
                self._idle.set()


class Scheduler:
    """Scores requests for one replica, alone or in batches, with the service's model."""

    def __init__(self, service: ModelService, batch: BatchFunction) -> None:
        self._service = service
        self._batch = batch
        # Scoring requests inside this replica (counted from handler entry, so requests that
        # queued while one was scored inline are seen): 1 means alone -> no batching wait.
        self._active = 0
        self._model_idle = IdleGate()
        self.stats = {"solo": 0, "batches": 0, "batched_requests": 0}

    @contextmanager
    def counted(self) -> Iterator[None]:
        """Wrap a whole request in this, so the scheduler knows whether it is alone."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def score_records(self, records: list[dict[str, Any]]) -> Scored:
        """Validated `/predict` records: more than a batch are validated and scored in one
        worker-thread call, fewer go the way of `score_rows`."""
        model = self._service.require_model()
        if len(records) > self._service.batch_size:
            return await self._run_model(model.score_records, records)
        return await self.score_rows(model.input_rows(records))

    async def score_rows(self, rows: Rows) -> Scored:
        """Model input, scored alone (large, or nothing else in flight) or in a batch."""
        if len(rows) > self._service.batch_size:
            model = self._service.require_model()
            return Scored(model, await self._run_model(model.score, rows))
        if self._active <= 1:
            # Alone: waiting for a batch to fill would only add latency. Scored in a thread
            # all the same, so requests arriving meanwhile check in and get batched.
            model = self._service.require_model()
            self.stats["solo"] += 1
            return Scored(model, await self._run_model(model.score, rows))
        await self._model_idle.wait()
        result = await self._batch(rows)
        if isinstance(result, RequestError):
            raise result
        return result

    async def score_batch(self, items: list[Rows]) -> list[Scored | RequestError]:
        """The batch function's work: many requests' rows, one model call, split back."""
        model = self._service.require_model()  # one model for the whole batch, even across a swap
        if all(isinstance(item, np.ndarray) for item in items):
            combined: Rows = np.vstack(items)
        else:
            combined = pd.concat([model.as_frame(item) for item in items], ignore_index=True)
        self.stats["batches"] += 1
        self.stats["batched_requests"] += len(items)
        try:
            proba = await self._run_model(model.predict_proba, combined)
        except ValueError:
            # One request's values broke the batch: score each alone so only that one fails.
            return [await self._run_model(model.score_alone, item) for item in items]
        results: list[Scored | RequestError] = []
        start = 0
        for item in items:
            results.append(Scored(model, proba[start : start + len(item)]))
            start += len(item)
        return results

    async def _run_model(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run model work in a worker thread, so the event loop keeps taking requests.

        While it runs, batchable requests wait at `_model_idle` and then enter the next batch
        together. Serve alone would not do that: it forms a new batch every
        `batch_wait_timeout_s` even while the last one is still being scored (batch formation
        is not held back by `max_concurrent_batches`), so under load its batches stay at
        arrival rate x wait, a few requests each, and queue up one behind the other.
        """
        with self._model_idle.busy():
            return await asyncio.to_thread(function, *args, **kwargs)
