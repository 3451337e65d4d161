"""The bare limit server of `benchmarks/serving.py`: the fastest this machine can serve the
benchmark's model with our own scoring code, and nothing else.

A raw ASGI app under uvicorn (uvloop, httptools), one process per core, orjson, our float fast
path and forest loop (`ml.predict.numeric_transform`, `estimator_proba`) and micro-batching of
concurrent requests (whatever arrived while the model was busy is scored in one call). No
validation, no telemetry, no Ray Serve, no prediction ids: the gap between it and our server is
the cost of those. It reads `POST /invocations` bodies in MLflow's `dataframe_split` form, with
the columns in the model's order (unchecked), and answers `{"predictions": [labels]}`.

    python -m benchmarks.limit_server CONFIG.json --port 8000 [--workers N]

CONFIG.json names the joblib pipeline, its feature columns, classes and decision threshold
(`benchmarks/serving.py` writes it next to the exported model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ml.decision import decide  # noqa: E402
from ml.predict import NumericTransform, estimator_proba, numeric_transform  # noqa: E402

CONFIG_ENV = "LIMIT_SERVER_CONFIG"
MAX_BATCH = 64
WORKER_START_S = 300
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass
class LimitModel:
    """The forest and the float transform in front of it, loaded once per process."""

    estimator: Any
    transform: NumericTransform
    labels: np.ndarray
    threshold: float | None

    @classmethod
    def from_config(cls, path: Path) -> LimitModel:
        config = json.loads(path.read_text())
        pipeline = joblib.load(config["model"])
        transform = numeric_transform(pipeline, config["columns"])
        if transform is None:
            raise SystemExit(f"{path}: the model has no float fast path (non-numeric features)")
        labels = np.asarray(config["classes"], dtype=object)
        return cls(pipeline[-1], transform, labels, config.get("threshold"))

    def labels_of(self, rows: np.ndarray) -> list[Any]:
        proba = estimator_proba(self.estimator, self.transform(rows))
        labels = decide(proba, self.labels, self.threshold)
        return [label.item() if isinstance(label, np.generic) else label for label in labels]


class MicroBatcher:
    """Scores a request at once when the model is idle; requests that arrive while it is busy
    wait and are scored together in the next call (in a thread, so the loop keeps reading)."""

    def __init__(self, model: LimitModel) -> None:
        self._model = model
        self._pending: list[tuple[np.ndarray, asyncio.Future[list[Any]]]] = []
        self._running = False

    async def labels(self, rows: np.ndarray) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                combined = np.vstack([rows for rows, _ in batch])
                try:
                    labels = await asyncio.to_thread(self._model.labels_of, combined)
                except ValueError as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                start = 0
                for rows, future in batch:
                    future.set_result(labels[start : start + len(rows)])
                    start += len(rows)
        finally:
            self._running = False


_batcher: MicroBatcher | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app: `POST /invocations` and `GET /ping`, nothing else."""
    global _batcher  # pylint: disable=global-statement
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            _batcher = MicroBatcher(LimitModel.from_config(Path(os.environ[CONFIG_ENV])))
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http" or _batcher is None:
        return
    if scope["path"] == "/ping":
        await _answer(send, 200, b"\n")
        return
    body = await _read_body(receive)
    try:
        rows = np.asarray(orjson.loads(body)["dataframe_split"]["data"], dtype=float)
        payload = orjson.dumps({"predictions": await _batcher.labels(rows)})
    except (ValueError, KeyError, TypeError) as exc:
        await _answer(send, 400, orjson.dumps({"error": str(exc)}))
        return
    await _answer(send, 200, payload)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ[CONFIG_ENV] = str(args.config.resolve())
    uvicorn.run(
        "benchmarks.limit_server:app",
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        # A worker imports scikit-learn and MLflow before it answers uvicorn's health ping:
        # on a busy machine that takes a minute, and the default 5 s restarts it forever.
        timeout_worker_healthcheck=WORKER_START_S,
    )


if __name__ == "__main__":
    main()
