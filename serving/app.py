"""The Ray Serve model server: the FastAPI routes and the deployment that wires them.

One deployment, `ModelServer`. Its `user_config` (see `serving/serve_config.yaml`) names a
resolved `models:/<name>/<version>`; a change of it makes Serve call `reconfigure` on each
replica in turn. The work is done by plain classes the deployment builds with the real
settings, loader and telemetry: `serving.service.ModelService` (load, swap, health, admin),
`serving.batching.Scheduler` (alone or batched scoring), `serving.protocol` (request and
response bodies) and `serving.model.ServedModel` (the model and its fast path).
"""

import asyncio
import json
import logging
import time
from importlib.resources import files
from typing import Any

import mlflow
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from mlflow.exceptions import MlflowException
from ray import serve
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Receive, Scope, Send

from elk.events import new_ids
from ml.config import Settings
from ml.data import DataError
from ml.model_card import RegistryDescriber
from ml.outcomes import OutcomeStore
from ml.predict import load_version, resolve_version
from serving.batching import Scheduler
from serving.model import Rows, Scored
from serving.protocol import (
    JSON_TYPE,
    as_request_error,
    invocation_rows,
    invocations_body,
    mlflow_error_body,
    mlflow_status,
    model_rows,
    parse_json,
    predict_body,
    read_body,
    require_content_type,
)
from serving.retrain_jobs import RetrainJobs
from serving.schemas import RequestError, RequestLimits, with_model_schemas
from serving.service import Answer, InputRows, ModelService
from serving.telemetry import PredictionTelemetry

SERVICE_NAME = "mlops-serving"
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="mlops-chain model server",
    description="The registered champion over HTTP: `/predict` (records keyed by feature "
    "name) and MLflow's `/invocations` scoring protocol.",
    version="1",
    openapi_url=None,  # served by the deployment, from the loaded model's features
    docs_url=None,
    redoc_url=None,
)

# Every asset of `/ui` and `/docs` ships in a package: the pages work without the internet.
UI_DIR = files("serving") / "ui"
SWAGGER_DIR = files("fastapi_offline") / "static"  # Swagger UI's dist files, pinned with it
# The page loads its own script and styles and talks to this server only.
UI_CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"
api.mount("/ui/static", StaticFiles(directory=str(UI_DIR)), name="ui-static")
api.mount("/docs/static", StaticFiles(directory=str(SWAGGER_DIR)), name="docs-static")

# The scoring routes, by path, and the ModelServer method that answers each.
HOT_ROUTES = {"/predict": "predict", "/invocations": "invocations"}


class HotRoutes:
    """`POST /predict` and `/invocations` straight to their methods, past FastAPI's routing and
    dependency solving (about a tenth of a request's time in a replica, profiled at c=64).
    They stay declared routes below, so `/openapi.json` and the docs are unchanged; the
    server-error middleware outside this one still turns an exception into a 500."""

    def __init__(self, app: ASGIApp, server: Any = None) -> None:
        self.app = app
        self._server = server  # the replica's ModelServer; tests pass a stand-in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = _hot_method(scope)
        if method is None:
            await self.app(scope, receive, send)
            return
        if self._server is None:  # Serve's public replica context, looked up once
            self._server = serve.get_replica_context().servable_object
        response = await getattr(self._server, method)(Request(scope, receive))
        await response(scope, receive, send)


def _hot_method(scope: Scope) -> str | None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):  # a route prefix other than "/"
        path = path[len(root) :]
    return HOT_ROUTES.get(path)


api.add_middleware(HotRoutes)


_OUTCOME = {
    "type": "object",
    "required": ["prediction_id", "label"],
    "additionalProperties": False,
    "properties": {
        "prediction_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "label": {"type": ["string", "number", "boolean"]},
    },
}
ADMIN_DENIALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong token, or admin disabled"},
}
FEEDBACK_SCHEMA = {"oneOf": [_OUTCOME, {"type": "array", "items": _OUTCOME, "minItems": 1}]}


def _outcome_store(settings: Settings) -> OutcomeStore | None:
    """Where predictions are recorded and outcomes stored; serving goes on without it."""
    if not settings.ct_record_predictions:
        return None
    try:
        return OutcomeStore(settings.ct_database)
    except Exception:  # pylint: disable=broad-exception-caught
        logger.exception("no outcome store: predictions are not recorded, /feedback answers 503")
        return None


def _send(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


@serve.deployment(name="ModelServer", max_ongoing_requests=128, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    """The model behind `/predict`, `/invocations`, `/ws/predict`, `/health`, `/version`,
    `/overview` and the `/ui` page."""

    def __init__(self) -> None:
        # Replicas run in other processes: their settings (tracking URI, admin token, log
        # directory) come from the environment the deployment's runtime_env gives them.
        settings = Settings()
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.mlflow_tracking_uri)
        outcomes = _outcome_store(settings)
        self._telemetry = PredictionTelemetry(settings, SERVICE_NAME, outcomes)
        self._service = ModelService(
            settings,
            load_version,
            self._telemetry,
            outcomes,
            resolver=resolve_version,
            describer=RegistryDescriber(settings),
        )
        self._scheduler = Scheduler(self._service, self._score_batch)
        self._retrain_jobs = RetrainJobs(settings)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this at start and on every user_config change (one replica at a time)."""
        options = self._service.accept(config)
        if options is None:
            return
        batcher: Any = self._score_batch  # @serve.batch adds these setters
        batcher.set_max_batch_size(options.max_batch_size)
        batcher.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        await self._service.apply(options)

    def check_health(self) -> None:
        """Serve's replica health check: a replica without a model is not healthy."""
        self._service.check_health()

    def __del__(self) -> None:
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            telemetry.close()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(self, items: list[Rows]) -> list[Scored | RequestError]:
        return await self._scheduler.score_batch(items)

    def _respond(
        self,
        body: dict[str, Any],
        scored: Scored,
        ids: list[str],
        route: str,
        started: float,
        rows: InputRows,
    ) -> Response:
        """The answer, with the request's telemetry queued once it is sent: the events of a
        10,000-row request take the telemetry thread a while to build, and must not compete
        with sending their own answer."""

        async def emit() -> None:
            self._service.scored(scored, ids, route, started, rows)

        return JSONResponse(body, background=BackgroundTask(emit))

    # --- routes ---------------------------------------------------------------------------

    @api.post("/predict")
    async def predict(self, request: Request) -> Response:
        """Score one record or a list of records keyed by feature name."""
        with self._scheduler.counted():
            return await self._predict(request)

    async def _predict(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            require_content_type(request.headers.get("content-type", ""), JSON_TYPE)
            body = parse_json(await read_body(request, self._service.max_bytes))
            model = self._service.require_model()
            records = model.validator.records(body, self._service.max_rows)
            scored = await self._scheduler.score_records(records)
        except (RequestError, DataError) as exc:
            error = as_request_error(exc)
            self._service.rejected("/predict", error, started)
            return JSONResponse(error.body(), status_code=error.status)
        ids = new_ids(len(scored.proba))
        return self._respond(predict_body(scored, ids), scored, ids, "/predict", started, records)

    @api.post("/invocations")
    async def invocations(self, request: Request) -> Response:
        """MLflow's scoring protocol: JSON (`dataframe_split`, `dataframe_records`,
        `instances`, `inputs`) or CSV in, `{"predictions": [...]}` out."""
        with self._scheduler.counted():
            return await self._invocations(request)

    async def _invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self._service.require_model()
            inputs = await invocation_rows(
                model,
                request.headers.get("content-type", ""),
                await read_body(request, self._service.max_bytes),
                self._service.max_rows,
            )
            scored = await self._scheduler.score_rows(
                await model_rows(model, inputs, self._service.batch_size)
            )
        except MlflowException as exc:
            return Response(
                exc.serialize_as_json(),
                status_code=exc.get_http_status_code(),
                media_type=JSON_TYPE,
            )
        except (RequestError, DataError) as exc:
            error = as_request_error(exc)
            self._service.rejected("/invocations", error, started)
            return JSONResponse(mlflow_error_body(error), status_code=mlflow_status(error))
        ids = new_ids(len(scored.proba))
        body = invocations_body(scored)
        return self._respond(body, scored, ids, "/invocations", started, inputs)

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
        with self._scheduler.counted():
            return await self._ws_score(message)

    async def _ws_score(self, message: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            model = self._service.require_model()
            records = model.validator.records(parse_json(message.encode()), self._service.max_rows)
            scored = await self._scheduler.score_records(records)
        except (RequestError, DataError) as exc:
            error = as_request_error(exc)
            return {"error": error.body(), "status": error.status}
        ids = new_ids(len(scored.proba))
        self._service.scored(scored, ids, "/ws/predict", started, records)
        return predict_body(scored, ids)

    @api.get("/health", responses={503: {"description": "no model loaded yet"}})
    async def health(self) -> Response:
        """Ready (200) once a model is loaded; the last load attempt either way."""
        return _send(self._service.health(self._scheduler.stats))

    @api.get(
        "/ping",
        response_class=PlainTextResponse,
        responses={
            200: {"description": "a model is loaded"},
            503: {"description": "no model loaded yet", "content": {"text/plain": {}}},
        },
    )
    async def ping(self) -> Response:
        """MLflow's readiness probe (its clients poll it before scoring): a newline, as
        `mlflow models serve` answers."""
        ready = self._service.model is not None
        return PlainTextResponse("\n", status_code=200 if ready else 503)

    @api.get("/version", responses={503: {"description": "no model loaded yet"}})
    async def version(self) -> Response:
        """Which model this replica serves."""
        return _send(self._service.version())

    @api.get(
        "/overview",
        responses={503: {"description": "no model is loaded yet"}},
    )
    async def overview(self) -> Response:
        """The served model for people (the `/ui` page): name, version, classes, the row
        limit, a hint per feature (training range or categories), the promotion decision,
        holdout scores, the newest continuous-training runs and live quality. What the
        registry or CT database cannot give is named in `errors`."""
        return _send(await self._service.overview())

    @api.get("/ui", include_in_schema=False)
    async def ui(self) -> Response:
        """A page for people: a form from the model's features, CSV scoring, model and CT."""
        return FileResponse(
            str(UI_DIR / "index.html"),
            media_type="text/html",
            headers={"Content-Security-Policy": UI_CSP},
        )

    @api.post(
        "/admin/reload",
        responses={
            **ADMIN_DENIALS,
            502: {"description": "the version could not be resolved or loaded; `last_load`"},
            503: {"description": "not configured yet"},
        },
    )
    async def reload(self, request: Request) -> Response:
        """Reload the configured model version on this replica (bearer token required)."""
        return _send(await self._service.reload(request.headers.get("authorization")))

    @api.post(
        "/admin/retrain",
        status_code=202,
        responses={
            **ADMIN_DENIALS,
            409: {"description": "a retrain job or another CT run is running"},
            503: {"description": "the Ray Jobs API did not answer"},
        },
    )
    async def retrain(self, request: Request) -> Response:
        """Retrain now (bearer token required): `mlops ct run --force` as a Ray job on this
        cluster; 202 with its id. The gate decides as for any CT run."""
        denied = self._service.admin_denial(request.headers.get("authorization"))
        if denied is not None:
            return _send(denied)
        return _send(await asyncio.to_thread(self._retrain_jobs.submit))

    @api.get(
        "/admin/retrain/{job_id}",
        responses={
            **ADMIN_DENIALS,
            404: {"description": "no such retrain job"},
            503: {"description": "the Ray Jobs API did not answer"},
        },
    )
    async def retrain_status(self, job_id: str, request: Request) -> Response:
        """A retrain job's state, and what its CT run did once it finished (bearer token)."""
        denied = self._service.admin_denial(request.headers.get("authorization"))
        if denied is not None:
            return _send(denied)
        return _send(await asyncio.to_thread(self._retrain_jobs.status, job_id))

    @api.post(
        "/feedback",
        openapi_extra={
            "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": FEEDBACK_SCHEMA}}}
        },
        responses={
            400: {"description": "not JSON, or nested too deeply"},
            401: {"description": "no bearer token"},
            403: {"description": "wrong token, or feedback disabled"},
            413: {
                "description": "more outcomes than a request may carry (max_request_rows), "
                "or a body over max_request_bytes"
            },
            422: {"description": "a malformed outcome; `field` names it"},
            429: {"description": "too many outcomes; see Retry-After"},
            503: {"description": "no outcome store on this replica"},
        },
    )
    async def feedback(self, request: Request) -> Response:
        """What really happened to predictions `/predict` answered (`prediction_id`), one or a
        list; bearer token `MLOPS_FEEDBACK_TOKEN` or the admin one. A result per item: an id
        not recorded (never issued, expired, or not yet written: retry after a second) fails
        alone; a repeated id replaces its label."""
        try:
            body = await read_body(request, self._service.max_bytes)
        except RequestError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return _send(await self._service.feedback(request.headers.get("authorization"), body))

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> Response:
        """The schema, with the request and response bodies of the loaded model."""
        base = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        model = self._service.model.loaded if self._service.model else None
        limits = RequestLimits(self._service.max_rows, self._service.max_bytes)
        return JSONResponse(with_model_schemas(base, model, limits))

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        """Swagger UI over `openapi.json`, its script and styles from this server."""
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title=f"{api.title} - docs",
            swagger_js_url="docs/static/swagger-ui-bundle.js",
            swagger_css_url="docs/static/swagger-ui.css",
            swagger_favicon_url="docs/static/favicon.png",
            # Swagger UI would ask validator.swagger.io for a badge: no request leaves here.
            swagger_ui_parameters={"validatorUrl": None},
        )


app = ModelServer.bind()  # type: ignore[attr-defined]
