"""serving.batching: which requests are scored alone and which are merged into one model call,
with a real fitted model, a real `ModelService` and `WindowBatcher` standing in for
`@serve.batch` (no Ray)."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.config import Settings
from serving.batching import IdleGate, Scheduler
from serving.model import Rows, Scored, ServedModel
from serving.schemas import RequestError, ServingOptions
from serving.service import ModelService
from tests.unit.serving_support import (
    Registry,
    TelemetryCollector,
    WindowBatcher,
    demo_model,
    demo_rows,
    held_demo_model,
    mixed_model,
    mixed_records,
)

BATCH_SIZE = 4


def _scheduler(tmp_path: Path, name: str, model: Any) -> tuple[Scheduler, WindowBatcher]:
    service = ModelService(
        Settings(var_dir=tmp_path / "var"), Registry({(name, "1"): model}), TelemetryCollector()
    )
    options = ServingOptions(model_uri=f"models:/{name}/1", max_batch_size=BATCH_SIZE)
    asyncio.run(service.apply(options))
    batcher = WindowBatcher()
    scheduler = Scheduler(service, batcher)
    batcher.target = scheduler.score_batch
    return scheduler, batcher


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Scheduler, WindowBatcher]]:
    yield _scheduler(tmp_path, "demo", demo_model())
    gc.unfreeze()


@pytest.fixture(scope="module")
def served() -> ServedModel:
    """The reference: the same model, scored directly."""
    return ServedModel.of(demo_model())


def _matrix(count: int, start: int = 0) -> np.ndarray:
    return demo_rows(count, start).to_numpy(dtype=float)


def _overflowing() -> np.ndarray:
    """Finite values that overflow once scaled: the model refuses them (found by
    schemathesis against the real server)."""
    return np.full((1, _matrix(1).shape[1]), 1e308)


async def _request(scheduler: Scheduler, rows: Rows) -> Scored | RequestError:
    """One request as a route makes it: counted from entry, errors returned for the test."""
    with scheduler.counted():
        try:
            return await scheduler.score_rows(rows)
        except RequestError as exc:
            return exc


def _concurrently(scheduler: Scheduler, *requests: Rows) -> list[Scored | RequestError]:
    async def run() -> list[Scored | RequestError]:
        return await asyncio.gather(*(_request(scheduler, rows) for rows in requests))

    return asyncio.run(run())


def _proba(result: Scored | RequestError) -> np.ndarray:
    assert isinstance(result, Scored), result
    return result.proba


# --- alone, batched, large -------------------------------------------------------------------


def test_a_lone_request_is_scored_at_once(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, batcher = demo
    [result] = _concurrently(scheduler, _matrix(1))
    np.testing.assert_array_equal(_proba(result), served.predict_proba(_matrix(1)))
    assert batcher.sizes == []
    assert scheduler.stats == {"solo": 1, "batches": 0, "batched_requests": 0}


def test_concurrent_requests_are_merged_into_one_model_call(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    """The first finds the replica idle and is scored alone; the others wait for the model,
    then go as one batch, and each gets its own rows' answer back."""
    scheduler, batcher = demo
    requests = [_matrix(1, start) for start in range(6)]
    results = _concurrently(scheduler, *requests)
    for rows, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(_proba(result), served.predict_proba(rows), rtol=1e-12)
    assert batcher.sizes == [5]
    assert scheduler.stats == {"solo": 1, "batches": 1, "batched_requests": 5}


def test_requests_arriving_while_the_model_runs_wait_for_it_then_go_as_one_batch(
    tmp_path: Path,
) -> None:
    """Serve alone would send a batch every wait window while the model is busy; the
    scheduler holds them until the model is free, so they merge."""
    loaded, release = held_demo_model()
    scheduler, batcher = _scheduler(tmp_path, "demo", loaded)

    async def run() -> tuple[list[int], list[Scored | RequestError]]:
        try:
            first = asyncio.create_task(_request(scheduler, _matrix(1)))
            await asyncio.sleep(0.05)  # scored alone, held in its worker thread
            later = []
            for start in (1, 2):
                later.append(asyncio.create_task(_request(scheduler, _matrix(1, start))))
                await asyncio.sleep(batcher.wait_s * 2)  # a batch window passes
            sizes_while_busy = list(batcher.sizes)
        finally:
            release.set()
        return sizes_while_busy, await asyncio.gather(first, *later)

    sizes_while_busy, results = asyncio.run(run())
    gc.unfreeze()
    assert sizes_while_busy == []
    assert batcher.sizes == [2]
    assert scheduler.stats == {"solo": 1, "batches": 1, "batched_requests": 2}
    assert all(isinstance(result, Scored) for result in results)


def test_requests_of_several_rows_are_split_back_by_request(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, _ = demo
    requests = [_matrix(1), _matrix(3, 10), _matrix(2, 20), _matrix(4, 30)]
    results = _concurrently(scheduler, *requests)
    assert [len(_proba(result)) for result in results] == [1, 3, 2, 4]
    for rows, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(_proba(result), served.predict_proba(rows), rtol=1e-12)
    assert scheduler.stats["batched_requests"] == 3


def test_a_request_larger_than_a_batch_is_scored_alone_even_when_busy(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, batcher = demo
    large = _matrix(BATCH_SIZE + 1)
    results = _concurrently(scheduler, _matrix(1), large)
    np.testing.assert_array_equal(_proba(results[1]), served.predict_proba(large))
    assert batcher.sizes == []
    assert scheduler.stats == {"solo": 1, "batches": 0, "batched_requests": 0}


def test_more_records_than_a_batch_are_validated_and_scored_on_their_own(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, batcher = demo
    frame = demo_rows(BATCH_SIZE + 2)
    records = json.loads(frame.to_json(orient="records"))
    scored = asyncio.run(scheduler.score_records(records))
    np.testing.assert_allclose(scored.proba, served.predict_proba(frame.to_numpy()), rtol=1e-12)
    assert batcher.sizes == [] and scheduler.stats["solo"] == 0


def test_bad_records_in_a_large_request_name_the_field(demo: tuple[Scheduler, Any]) -> None:
    scheduler, _ = demo
    records = json.loads(demo_rows(BATCH_SIZE + 2).to_json(orient="records"))
    records[5]["mean area"] = "big"
    with pytest.raises(RequestError) as caught:
        asyncio.run(scheduler.score_records(records))
    assert caught.value.field == "records[5].mean area"


# --- errors ----------------------------------------------------------------------------------


def test_one_bad_request_in_a_batch_fails_only_itself(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, batcher = demo
    results = _concurrently(scheduler, _matrix(1), _matrix(1, 1), _overflowing(), _matrix(1, 2))
    assert batcher.sizes == [3]
    failed = results[2]
    assert isinstance(failed, RequestError)
    assert (failed.status, failed.field) == (422, "body")
    assert "cannot score these values" in failed.message
    for index, start in [(0, 0), (1, 1), (3, 2)]:
        expected = served.predict_proba(_matrix(1, start))
        np.testing.assert_allclose(_proba(results[index]), expected, rtol=1e-12)


def test_a_lone_bad_request_is_a_422(demo: tuple[Scheduler, WindowBatcher]) -> None:
    scheduler, _ = demo
    [result] = _concurrently(scheduler, _overflowing())
    assert isinstance(result, RequestError) and result.status == 422


def test_without_a_model_scoring_is_503(tmp_path: Path) -> None:
    service = ModelService(Settings(var_dir=tmp_path), Registry({}), TelemetryCollector())
    scheduler = Scheduler(service, WindowBatcher())
    with pytest.raises(RequestError) as caught:
        asyncio.run(scheduler.score_records([{"a": 1}]))
    assert caught.value.status == 503


# --- frames (models with categorical features) -----------------------------------------------


def test_frames_are_merged_and_split_too(tmp_path: Path) -> None:
    scheduler, batcher = _scheduler(tmp_path, "mixed", mixed_model())
    model = ServedModel.of(mixed_model())
    records = json.loads(mixed_records(5).to_json(orient="records"))
    requests = [model.input_rows(records[:1]), model.input_rows(records[1:3])]
    requests += [model.input_rows(records[3:4]), model.input_rows(records[4:])]
    assert all(isinstance(rows, pd.DataFrame) for rows in requests)
    results = _concurrently(scheduler, *requests)
    assert batcher.sizes == [3]
    for rows, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(_proba(result), model.predict_proba(rows), rtol=1e-12)
    gc.unfreeze()


def test_matrices_and_frames_merge_in_one_batch(
    demo: tuple[Scheduler, WindowBatcher], served: ServedModel
) -> None:
    scheduler, _ = demo
    as_frame = served.as_frame(_matrix(2, 5))
    [first, second] = asyncio.run(scheduler.score_batch([_matrix(1), as_frame]))
    np.testing.assert_allclose(_proba(first), served.predict_proba(_matrix(1)), rtol=1e-12)
    np.testing.assert_allclose(_proba(second), served.predict_proba(_matrix(2, 5)), rtol=1e-12)


def test_a_model_with_a_boolean_feature_scores_records(tmp_path: Path) -> None:
    """Request rows are coerced once by serving and again by the model's `prepare`; the
    second pass must take the first's 0.0/1.0 (every request to such a model was a 422)."""
    loaded = mixed_model(with_boolean=True)
    model = ServedModel.of(loaded)
    frame = mixed_records(4, with_boolean=True)
    records = json.loads(frame.to_json(orient="records"))
    proba = model.score(model.input_rows(records))
    np.testing.assert_allclose(proba, loaded.predict_proba(frame), rtol=1e-12)


# --- the idle gate ---------------------------------------------------------------------------


def test_the_gate_opens_only_when_all_model_work_is_done() -> None:
    async def run() -> list[str]:
        gate, seen = IdleGate(), []

        async def waiter() -> None:
            await gate.wait()
            seen.append("passed")

        with gate.busy():
            with gate.busy():
                task = asyncio.create_task(waiter())
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)  # one run still going: the waiter still waits
            seen.append("last run done")
        await task
        return seen

    assert asyncio.run(run()) == ["last run done", "passed"]
