"""The Ray Serve model server: FastAPI ingress, dynamic batching, in-place model swaps.

One deployment, `ModelServer`. Its `user_config` (see `serving/serve_config.yaml`) names a
resolved `models:/<name>/<version>`; a change of it makes Serve call `reconfigure` on each
replica in turn, which loads the new version in a worker thread and swaps only once it loaded,
so requests never see a half-loaded model and a failed load keeps the old one serving.

Scoring has three paths, picked per request, all running the model in a worker thread:
- alone (nothing else in flight): scored at once, no batching wait (concurrency 1 latency);
- concurrent small requests: they wait while the model is busy, then `@serve.batch` merges
  them into one `predict_proba` call (a forest costs about the same for 1 row as for 64, so
  this is the throughput lever);
- large requests (more rows than a batch): validated and scored on their own.
"""

import asyncio
import gc
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from mlflow.exceptions import MlflowException
from pydantic import ValidationError
from ray import serve

from elk.events import new_ids, utc_now_iso
from ml.config import Settings
from ml.data import DataError
from ml.predict import (
    LoadedModel,
    NumericTransform,
    estimator_proba,
    load_version,
    numeric_transform,
    pipeline_proba,
)
from serving.schemas import (
    RecordValidator,
    RequestError,
    ServingOptions,
    check_frame,
    check_row_count,
    data_error_field,
    with_model_schemas,
)
from serving.telemetry import PredictionTelemetry

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
SERVICE_NAME = "mlops-serving"
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
LARGE_BODY_BYTES = 64 * 1024  # parsed in a worker thread, so the event loop keeps serving

api = FastAPI(
    title="mlops-chain model server",
    description="The registered champion over HTTP: `/predict` (records keyed by feature "
    "name) and MLflow's `/invocations` scoring protocol.",
    version="1",
    openapi_url=None,  # served by the deployment, from the loaded model's features
    docs_url=None,
    redoc_url=None,
)


@dataclass
class ServedModel:
    """A loaded model and what serving derives from it once, at load time."""

    loaded: LoadedModel
    validator: RecordValidator
    classes: list[Any]
    label_array: np.ndarray = field(init=False)
    column_index: pd.Index = field(init=False)
    numeric: NumericTransform | None = field(init=False)

    def __post_init__(self) -> None:
        self.label_array = np.asarray(self.classes, dtype=object)
        # Object dtype, not pandas 3's default Arrow strings: the preprocessing's column
        # lookups on every batch are about a fifth cheaper.
        self.column_index = pd.Index(self.validator.columns, dtype=object)
        # Float matrices skip the ColumnTransformer when the same arithmetic reproduces it.
        self.numeric = (
            numeric_transform(self.loaded.model, self.validator.columns)
            if self.validator.all_numeric
            else None
        )

    @classmethod
    def of(cls, loaded: LoadedModel) -> "ServedModel":
        return cls(loaded, RecordValidator(dict(loaded.feature_types)), list(loaded.classes))

    def predict_proba(self, rows: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Float matrices are already typed: through the numeric transform when the model
        has one, else its pipeline. Frames go through the model's own coercion."""
        if not isinstance(rows, np.ndarray):
            return self.loaded.predict_proba(rows)
        if self.numeric is not None:
            return estimator_proba(self.loaded.model[-1], self.numeric(rows))
        return pipeline_proba(self.loaded.model, pd.DataFrame(rows, columns=self.column_index))

    def score(self, rows: np.ndarray | pd.DataFrame) -> np.ndarray:
        """`predict_proba`, with values the model cannot take (e.g. overflowing after scaling)
        reported as the client's error rather than a 500."""
        try:
            return self.predict_proba(rows)
        except ValueError as exc:
            message = str(exc).splitlines()[0]
            raise RequestError("body", f"the model cannot score these values: {message}") from exc

    def score_alone(self, rows: np.ndarray | pd.DataFrame) -> "Scored | RequestError":
        try:
            return Scored(self, self.score(rows))
        except RequestError as exc:
            return exc

    def input_rows(self, records: list[dict[str, Any]]) -> np.ndarray | pd.DataFrame:
        """Validated records in the cheapest form the model can take."""
        if self.validator.all_numeric:
            return self.validator.numeric_rows(records)
        return self.loaded.prepare(self.validator.frame(records))

    def frame_rows(self, frame: pd.DataFrame) -> np.ndarray | pd.DataFrame:
        """A frame parsed by MLflow's protocol in the cheapest form the model can take: a float
        matrix when every feature is numeric and arrived as numbers (no per-column coercion),
        else the model's own coercion, which names a bad column."""
        columns = self.validator.columns
        if self.validator.all_numeric and set(frame.columns) == set(columns):
            frame = frame[columns]
            dtypes = frame.dtypes
            if all(
                pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                for t in dtypes
            ):
                return frame.to_numpy(dtype=float)
        try:
            return self.loaded.prepare(frame)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise RequestError("body", f"cannot read the rows: {exc}", 400) from exc


@dataclass
class Scored:
    """Probabilities for some rows and the model that computed them (a swap may follow)."""

    model: ServedModel
    proba: np.ndarray

    @property
    def labels(self) -> list[Any]:
        return list(self.model.label_array[self.proba.argmax(axis=1)])


class IdleGate:
    """Open while no model work runs; model work may overlap (a batch and a solo request)."""

    def __init__(self) -> None:
        self._runs = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait(self) -> None:
        await self._idle.wait()

    @contextmanager
    def busy(self) -> Iterator[None]:
        self._runs += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._runs -= 1
            if not self._runs:
                self._idle.set()


# --- helpers ------------------------------------------------------------------------------


def _require_content_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "")
    if given.split(";")[0].strip().lower() != expected:
        raise RequestError("content-type", f"expected {expected}, got {given or 'none'!r}", 415)


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise RequestError("body", "the request body is empty")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"not valid JSON: {exc}", 400) from exc


def _mlflow_frame(content_type: str, body: bytes, columns: list[str]) -> pd.DataFrame:
    """Parse with MLflow's own scoring-server functions, so the protocol is exactly theirs."""
    from io import StringIO

    from mlflow.pyfunc import scoring_server

    mime = content_type.split(";")[0].strip().lower()
    if not body.strip():
        raise RequestError("body", "the request body is empty", 400)
    if mime == CSV_TYPE:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError("body", "CSV must be UTF-8", 400) from exc
        return scoring_server.parse_csv_input(StringIO(text))
    if mime != JSON_TYPE:
        raise RequestError(
            "content-type",
            f"expected {JSON_TYPE} or {CSV_TYPE}, got " f"{content_type or 'none'!r}",
            415,
        )
    decoded = scoring_server._decode_json_input(body)  # pylint: disable=protected-access
    data = {key: value for key, value in decoded.items() if key != "params"}
    return _as_input_frame(scoring_server.infer_and_parse_data(data), columns)


def _as_input_frame(parsed: Any, columns: list[str]) -> pd.DataFrame:
    """What MLflow's parser returns for the four JSON formats -> one frame of rows: a frame
    (dataframe_*), a dict of columns (instances/inputs as columns), a list of records with 0-d
    arrays (inputs as records), or a matrix (instances/inputs as lists, in feature order)."""
    try:
        if isinstance(parsed, pd.DataFrame):
            return parsed
        if isinstance(parsed, dict):
            return pd.DataFrame({key: np.atleast_1d(value) for key, value in parsed.items()})
        if isinstance(parsed, list) and all(isinstance(row, dict) for row in parsed):
            return pd.DataFrame.from_records([_scalars(row) for row in parsed])
        matrix = np.asarray(parsed)
        if matrix.ndim == 2 and matrix.shape[1] == len(columns):
            return pd.DataFrame(matrix, columns=columns)
    except (ValueError, TypeError) as exc:
        raise RequestError("body", f"cannot be read as rows of features: {exc}", 400) from exc
    raise RequestError(
        "body",
        f"expected records keyed by feature name, or rows of "
        f"{len(columns)} values in feature order",
        400,
    )


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in row.items():
        if np.ndim(value) != 0:
            raise RequestError(str(key), "must be a single value", 400)
        values[key] = value.item() if isinstance(value, np.ndarray) else value
    return values


def _as_frame(model: ServedModel, rows: np.ndarray | pd.DataFrame) -> pd.DataFrame:
    if isinstance(rows, np.ndarray):
        return pd.DataFrame(rows, columns=model.validator.columns)
    return rows


def _predict_body(scored: Scored, ids: list[str]) -> dict[str, Any]:
    loaded = scored.model.loaded
    class_names = [str(label) for label in scored.model.classes]
    labels = _plain_list(scored.labels)
    predictions = [
        {
            "prediction_id": prediction_id,
            "label": label,
            "probabilities": dict(zip(class_names, row)),
        }
        for prediction_id, label, row in zip(ids, labels, scored.proba.tolist())
    ]
    return {"model_name": loaded.name, "model_version": loaded.version, "predictions": predictions}


def _plain_list(values: list[Any]) -> list[Any]:
    return [value.item() if isinstance(value, np.generic) else value for value in values]


def _mlflow_code(status: int) -> str:
    return {413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}.get(
        status, "BAD_REQUEST"
    )


@serve.deployment(name="ModelServer", max_ongoing_requests=128, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    """The model behind `/predict`, `/invocations`, `/ws/predict`, `/health`, `/version`."""

    def __init__(self) -> None:
        # Replicas run in other processes: their settings (tracking URI, admin token, log
        # directory) come from the environment the deployment's runtime_env gives them.
        self._settings = Settings()
        mlflow.set_tracking_uri(self._settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(self._settings.mlflow_tracking_uri)
        self._model: ServedModel | None = None
        self._options: ServingOptions | None = None
        self._last_load: dict[str, Any] = {"status": "not started"}
        self._load_lock = asyncio.Lock()
        # Scoring requests inside this replica (counted from handler entry, so requests that
        # queued while one was scored inline are seen): 1 means alone -> no batching wait.
        self._active = 0
        self._model_idle = IdleGate()
        self._scoring_stats = {"solo": 0, "batches": 0, "batched_requests": 0}
        self._telemetry = PredictionTelemetry(self._settings, SERVICE_NAME)

    # --- model lifecycle ------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this at start and on every user_config change (one replica at a time)."""
        try:
            options = ServingOptions.model_validate(config)
        except ValidationError as exc:
            if self._model is None:
                raise
            self._record_failure(str(config.get("model_uri")), f"bad user_config: {exc}")
            return
        batcher: Any = self._score_batch  # @serve.batch adds these setters
        batcher.set_max_batch_size(options.max_batch_size)
        batcher.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        self._options = options
        await self._load(options)

    async def _load(self, options: ServingOptions) -> None:
        async with self._load_lock:
            started = time.perf_counter()
            self._last_load = {
                "model_uri": options.model_uri,
                "status": "loading",
                "started_at": utc_now_iso(),
            }
            try:
                loaded = await asyncio.to_thread(
                    load_version, options.model_name, options.model_version
                )
                served = ServedModel.of(loaded)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if self._model is None:
                    self._record_failure(options.model_uri, str(exc))
                    raise  # a replica without any model must not take traffic
                self._record_failure(options.model_uri, str(exc))
                return
            self._model = served  # the swap: one reference assignment, after a good load
            # What is loaded now (the model, every imported module) lives as long as the
            # replica: frozen, the cyclic GC's full collections stop walking it each time a
            # large body's lists are parsed (24 parses of 10,000 rows: 397 -> 110 ms in GC,
            # worst parse 174 -> 35 ms). Refcounting still frees a swapped-out model.
            gc.freeze()
            self._last_load.update(
                status="loaded",
                finished_at=utc_now_iso(),
                duration_s=round(time.perf_counter() - started, 3),
            )
            logger.info("serving %s (run %s)", loaded.uri, loaded.run_id)

    def _record_failure(self, model_uri: str, error: str) -> None:
        self._last_load.update(
            model_uri=model_uri, status="failed", error=error, finished_at=utc_now_iso()
        )
        logger.error(
            "loading %s failed, still serving %s: %s",
            model_uri,
            self._model.loaded.uri if self._model else "nothing",
            error,
        )

    def check_health(self) -> None:
        """Serve's replica health check: a replica without a model is not healthy."""
        if self._model is None:
            raise RuntimeError(f"no model loaded: {self._last_load}")

    def __del__(self) -> None:
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            telemetry.close()

    # --- scoring --------------------------------------------------------------------------

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(
        self, items: list[np.ndarray | pd.DataFrame]
    ) -> list[Scored | RequestError]:
        model = self._require_model()  # one model for the whole batch, even across a swap
        if all(isinstance(item, np.ndarray) for item in items):
            combined: np.ndarray | pd.DataFrame = np.vstack(items)
        else:
            combined = pd.concat([_as_frame(model, item) for item in items], ignore_index=True)
        self._scoring_stats["batches"] += 1
        self._scoring_stats["batched_requests"] += len(items)
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

    async def _score_records(self, records: list[dict[str, Any]]) -> Scored:
        model = self._require_model()
        if len(records) > self._batch_size():
            return await self._run_model(self._score_now, model, records)
        return await self._score_rows(model.input_rows(records))

    async def _score_rows(self, rows: np.ndarray | pd.DataFrame) -> Scored:
        if len(rows) > self._batch_size():
            model = self._require_model()
            return Scored(model, await self._run_model(model.score, rows))
        if self._active <= 1:
            # Alone: waiting for a batch to fill would only add latency. Scored in a thread
            # all the same, so requests arriving meanwhile check in and get batched.
            model = self._require_model()
            self._scoring_stats["solo"] += 1
            return Scored(model, await self._run_model(model.score, rows))
        await self._model_idle.wait()
        result = await self._score_batch(rows)
        if isinstance(result, RequestError):
            raise result
        return result

    async def _run_model(self, function: Callable[..., T], *args: Any) -> T:
        """Run model work in a worker thread, so the event loop keeps taking requests.

        While it runs, batchable requests wait at `_model_idle` and then enter the next batch
        together. Serve alone would not do that: it forms a new batch every
        `batch_wait_timeout_s` even while the last one is still being scored (batch formation
        is not held back by `max_concurrent_batches`), so under load its batches stay at
        arrival rate x wait, a few requests each, and queue up one behind the other.
        """
        with self._model_idle.busy():
            return await asyncio.to_thread(function, *args)

    @staticmethod
    def _score_now(model: ServedModel, records: list[dict[str, Any]]) -> Scored:
        return Scored(model, model.score(model.input_rows(records)))

    @contextmanager
    def _counted(self) -> Iterator[None]:
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    def _batch_size(self) -> int:
        return self._options.max_batch_size if self._options else 64

    def _max_rows(self) -> int:
        return self._options.max_request_rows if self._options else 10_000

    def _require_model(self) -> ServedModel:
        if self._model is None:
            raise RequestError("model", "no model is loaded yet", status=503)
        return self._model

    def _emit(
        self,
        scored: Scored,
        ids: list[str],
        route: str,
        started: float,
        rows: list[dict[str, Any]] | pd.DataFrame | np.ndarray,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self._telemetry.predictions(
            scored.model.loaded,
            ids,
            scored.labels,
            scored.proba.max(axis=1),
            latency_ms,
            route,
            (rows, scored.model.validator.columns),
        )

    def _respond(
        self,
        body: dict[str, Any],
        scored: Scored,
        ids: list[str],
        route: str,
        started: float,
        rows: list[dict[str, Any]] | pd.DataFrame | np.ndarray,
    ) -> Response:
        """The answer, with the request's telemetry queued once it is sent: the events of a
        10,000-row request take the telemetry thread a while to build, and must not compete
        with sending their own answer."""

        async def emit() -> None:
            self._emit(scored, ids, route, started, rows)

        return JSONResponse(body, background=BackgroundTask(emit))

    # --- routes ---------------------------------------------------------------------------

    @api.post("/predict")
    async def predict(self, request: Request) -> Response:
        """Score one record or a list of records keyed by feature name."""
        with self._counted():
            return await self._predict(request)

    async def _predict(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            _require_content_type(request, JSON_TYPE)
            body = _parse_json(await request.body())
            model = self._require_model()
            records = model.validator.records(body, self._max_rows())
            scored = await self._score_records(records)
        except RequestError as exc:
            self._telemetry.failure("/predict", exc, started, self._model)
            return JSONResponse(exc.body(), status_code=exc.status)
        except DataError as exc:
            error = RequestError(data_error_field(exc), str(exc))
            self._telemetry.failure("/predict", error, started, self._model)
            return JSONResponse(error.body(), status_code=422)
        ids = new_ids(len(scored.proba))
        return self._respond(_predict_body(scored, ids), scored, ids, "/predict", started, records)

    @api.post("/invocations")
    async def invocations(self, request: Request) -> Response:
        """MLflow's scoring protocol: JSON (`dataframe_split`, `dataframe_records`,
        `instances`, `inputs`) or CSV in, `{"predictions": [...]}` out."""
        with self._counted():
            return await self._invocations(request)

    async def _invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self._require_model()
            inputs = await self._invocation_rows(model, request)
            scored = await self._score_rows(
                inputs if isinstance(inputs, np.ndarray) else await self._frame_rows(model, inputs)
            )
        except MlflowException as exc:
            return Response(
                exc.serialize_as_json(),
                status_code=exc.get_http_status_code(),
                media_type=JSON_TYPE,
            )
        except (RequestError, DataError) as exc:
            error = (
                exc
                if isinstance(exc, RequestError)
                else RequestError(data_error_field(exc), str(exc))
            )
            self._telemetry.failure("/invocations", error, started, self._model)
            status = error.status if error.status != 422 else 400
            return JSONResponse(
                {"error_code": _mlflow_code(status), "message": str(error)}, status_code=status
            )
        ids = new_ids(len(scored.proba))
        body = {"predictions": _plain_list(scored.labels)}
        return self._respond(body, scored, ids, "/invocations", started, inputs)

    async def _invocation_rows(
        self, model: ServedModel, request: Request
    ) -> np.ndarray | pd.DataFrame:
        """The plain numeric `dataframe_split` straight to a matrix; every other body through
        MLflow's own parser. Either way within the row limit."""
        content_type = request.headers.get("content-type", "")
        body = await request.body()
        matrix = None
        if content_type.split(";")[0].strip().lower() == JSON_TYPE:
            matrix = (
                await asyncio.to_thread(model.validator.split_matrix, body)
                if len(body) > LARGE_BODY_BYTES
                else model.validator.split_matrix(body)
            )
        if matrix is None:
            frame = _mlflow_frame(content_type, body, model.validator.columns)
            check_frame(frame, self._max_rows())
            return frame
        check_row_count(len(matrix), self._max_rows())
        return matrix

    async def _frame_rows(
        self, model: ServedModel, frame: pd.DataFrame
    ) -> np.ndarray | pd.DataFrame:
        if len(frame) > self._batch_size():
            return await asyncio.to_thread(model.frame_rows, frame)
        return model.frame_rows(frame)

    @api.websocket("/ws/predict")
    async def predict_stream(self, websocket: WebSocket) -> None:
        """A stream of records (or lists of records), one JSON reply per message."""
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive_text()
                await websocket.send_text(json.dumps(await self._ws_reply(message)))
        except WebSocketDisconnect:
            return

    async def _ws_reply(self, message: str) -> dict[str, Any]:
        with self._counted():
            return await self._ws_score(message)

    async def _ws_score(self, message: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            model = self._require_model()
            records = model.validator.records(_parse_json(message.encode()), self._max_rows())
            scored = await self._score_records(records)
        except RequestError as exc:
            return {"error": exc.body(), "status": exc.status}
        except DataError as exc:
            return {"error": RequestError(data_error_field(exc), str(exc)).body(), "status": 422}
        ids = new_ids(len(scored.proba))
        self._emit(scored, ids, "/ws/predict", started, records)
        return _predict_body(scored, ids)

    @api.get("/health")
    async def health(self) -> Response:
        """Ready (200) once a model is loaded; the last load attempt either way."""
        body = {
            "status": "ready" if self._model else "not ready",
            "model_uri": self._model.loaded.uri if self._model else None,
            "last_load": self._last_load,
            "telemetry_dropped": self._telemetry.dropped,
            "scoring": self._scoring_stats,
        }
        return JSONResponse(body, status_code=200 if self._model else 503)

    @api.get("/ping")
    async def ping(self) -> Response:
        """MLflow's readiness probe (its clients poll it before scoring)."""
        return Response("\n", status_code=200 if self._model else 503, media_type="text/plain")

    @api.get("/version")
    async def version(self) -> Response:
        """Which model this replica serves."""
        if self._model is None:
            return JSONResponse({"detail": "no model is loaded yet", "field": "model"}, 503)
        loaded = self._model.loaded
        return JSONResponse(
            {
                "model_name": loaded.name,
                "model_version": loaded.version,
                "model_uri": loaded.uri,
                "run_id": loaded.run_id,
                "loaded_at": loaded.loaded_at,
            }
        )

    @api.post("/admin/reload")
    async def reload(self, request: Request) -> Response:
        """Reload the configured model version on this replica (bearer token required)."""
        denied = self._check_admin(request.headers.get("authorization"))
        if denied is not None:
            return denied
        if self._options is None:
            return JSONResponse({"detail": "not configured yet", "field": "model"}, 503)
        await self._load(self._options)
        status = 200 if self._last_load.get("status") == "loaded" else 502
        return JSONResponse({"last_load": self._last_load}, status_code=status)

    def _check_admin(self, authorization: str | None) -> Response | None:
        token = self._settings.admin_token
        if token is None or not token.get_secret_value():
            return JSONResponse(
                {"detail": "admin is disabled: set MLOPS_ADMIN_TOKEN", "field": "authorization"},
                status_code=403,
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return JSONResponse(
                {"detail": "a bearer token is required", "field": "authorization"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return JSONResponse({"detail": "wrong token", "field": "authorization"}, 403)
        return None

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> Response:
        base = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        model = self._model.loaded if self._model else None
        return JSONResponse(with_model_schemas(base, model))

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{api.title} - docs")


app = ModelServer.bind()  # type: ignore[attr-defined]
