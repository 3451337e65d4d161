"""What the serving unit tests share: small real models (fitted here, no registry), a loader
over them, an in-memory telemetry collector, and `WindowBatcher`, a plain-asyncio stand-in for
`@serve.batch` (which only works inside a Serve replica)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from ml.data import Dataset, load_dataset, validate
from ml.features import build_pipeline
from ml.predict import LoadedModel
from ml.registry import RegistryError
from serving.model import Rows, Scored, ServedModel
from serving.schemas import RequestError
from tests.unit.test_data import mixed_frame

LOGREG = {"family": "logreg", "C": 1.0, "class_weight": None}


@cache
def demo_dataset() -> Dataset:
    """The bundled demo data: 30 numeric features, labels benign/malignant."""
    return load_dataset("demo", None)


@cache
def mixed_dataset(with_boolean: bool = False) -> Dataset:
    """Numeric and categorical features (and a boolean one if asked) with gaps."""
    frame = mixed_frame() if with_boolean else mixed_frame().drop(columns=["member"])
    return validate(frame, "churned", source="frame")


def fitted(dataset: Dataset, name: str, version: str) -> LoadedModel:
    """A logistic-regression pipeline fitted on `dataset`, as `load_version` would return it."""
    pipeline = build_pipeline(LOGREG, dataset.feature_types, seed=0).fit(dataset.X, dataset.y)
    return LoadedModel(
        name=name,
        version=version,
        run_id=f"run-{version}",
        model=pipeline,
        feature_types=dict(dataset.feature_types),
        classes=pipeline.classes_.tolist(),  # plain values, as the saved metadata has them
        input_example=dataset.X.head(1),
        loaded_at="2026-12-06T00:00:00+00:00",
    )


@cache
def demo_model(version: str = "1") -> LoadedModel:
    return fitted(demo_dataset(), "demo", version)


@cache
def mixed_model(with_boolean: bool = False) -> LoadedModel:
    return fitted(mixed_dataset(with_boolean), "mixed", "1")


class HeldLogisticRegression(LogisticRegression):
    """A logistic regression that scores only once `release` is set: a test keeps the model
    busy (in its worker thread) for as long as it needs, without timing anything."""

    release: threading.Event

    def predict_proba(self, X: Any) -> Any:
        self.release.wait(timeout=60)
        return super().predict_proba(X)


def held_demo_model() -> tuple[LoadedModel, threading.Event]:
    """The demo model with a `HeldLogisticRegression`, and the event that lets it score."""
    plain = demo_model()
    held = HeldLogisticRegression(**plain.model[-1].get_params())
    pipeline = clone(plain.model).set_params(model=held).fit(demo_dataset().X, demo_dataset().y)
    pipeline[-1].release = threading.Event()
    return replace(plain, model=pipeline), pipeline[-1].release


def demo_rows(count: int, start: int = 0) -> pd.DataFrame:
    return demo_dataset().X.iloc[start : start + count].reset_index(drop=True)


def mixed_records(count: int, with_boolean: bool = False) -> pd.DataFrame:
    """Raw rows as a client sends them (booleans as TRUE/FALSE, gaps as null)."""
    frame = mixed_frame().drop(columns=["churned"])
    return (frame if with_boolean else frame.drop(columns=["member"])).head(count)


@dataclass
class Registry:
    """The loader a service gets: known (name, version) pairs, a `RegistryError` otherwise."""

    models: dict[tuple[str, str], LoadedModel]
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, name: str, version: str) -> LoadedModel:
        self.calls.append((name, version))
        try:
            return self.models[(name, version)]
        except KeyError:
            raise RegistryError(f"cannot load models:/{name}/{version}: not found") from None


@dataclass
class TelemetryCollector:
    """Keeps what the service hands to telemetry, for the test to read."""

    dropped: int = 0
    queued: int = 0
    scored: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)

    def predictions(
        self,
        model: LoadedModel,
        prediction_ids: Sequence[str],
        labels: Sequence[Any],
        proba: np.ndarray,
        latency_ms: float,
        route: str,
        inputs: tuple[Any, list[str]],
    ) -> None:
        self.scored.append(
            {
                "model": model,
                "ids": list(prediction_ids),
                "labels": list(labels),
                "proba": proba,
                "latency_ms": latency_ms,
                "route": route,
                "inputs": inputs,
            }
        )

    def failure(
        self, route: str, error: Exception, started: float, served: ServedModel | None
    ) -> None:
        self.failures.append({"route": route, "error": error, "served": served})

    def feedback(self, model_name: str, results: Sequence[Any], labels: Sequence[Any]) -> None:
        self.outcomes.append({"model_name": model_name, "results": results, "labels": labels})

    def model_load(
        self,
        model_name: str,
        model_version: str | None,
        status: str,
        duration_s: float,
        error: str | None = None,
    ) -> None:
        self.loads.append({"name": model_name, "version": model_version, "status": status})


BatchTarget = Callable[[list[Rows]], Awaitable[list[Scored | RequestError]]]


class WindowBatcher:
    """Calls arriving within `wait_s` of the first go to `target` as one list, as
    `@serve.batch` does; `sizes` records each batch. An exception fails the whole batch."""

    def __init__(self, wait_s: float = 0.05) -> None:
        self.wait_s = wait_s
        self.target: BatchTarget | None = None
        self.sizes: list[int] = []
        self._waiting: list[tuple[Rows, asyncio.Future[Scored | RequestError]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, rows: Rows) -> Scored | RequestError:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored | RequestError] = loop.create_future()
        self._waiting.append((rows, future))
        if len(self._waiting) == 1:
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await future

    async def _flush(self) -> None:
        assert self.target is not None, "set the batcher's target"
        await asyncio.sleep(self.wait_s)
        waiting, self._waiting = self._waiting, []
        self.sizes.append(len(waiting))
        try:
            results = await self.target([rows for rows, _ in waiting])
        except Exception as exc:  # pylint: disable=broad-exception-caught
            for _, future in waiting:
                future.set_exception(exc)
            return
        for (_, future), result in zip(waiting, results, strict=True):
            future.set_result(result)
