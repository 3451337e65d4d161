"""`serving.app.HotRoutes`: the scoring routes answered past FastAPI's router, without Ray.

The middleware is driven as plain ASGI with httpx; a stand-in server records which method
answered. The real routes through Serve are exercised by tests/integration/test_serving.py
and the schemathesis tests.
"""

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from serving.app import HOT_ROUTES, HotRoutes, ModelServer, api


class StandIn:
    """Answers like ModelServer's scoring methods, naming itself and echoing the body."""

    async def predict(self, request: Request) -> JSONResponse:
        return JSONResponse({"by": "hot predict", "body": (await request.body()).decode()})

    async def invocations(self, request: Request) -> JSONResponse:
        return JSONResponse({"by": "hot invocations", "body": (await request.body()).decode()})


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict() -> dict:
        return {"by": "router"}

    @app.get("/predict")
    async def predict_get() -> dict:
        return {"by": "router get"}

    @app.post("/health")
    async def health() -> dict:
        return {"by": "router"}

    app.add_middleware(HotRoutes, server=StandIn())
    return app


def _post(app: FastAPI, path: str, method: str = "POST", root_path: str = "") -> dict:
    async def send() -> dict:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            response = await client.request(method, root_path + path, content=b'{"x": 1}')
            response.raise_for_status()
            return response.json()

    return asyncio.run(send())


@pytest.mark.parametrize("path", sorted(HOT_ROUTES))
def test_a_scoring_post_is_answered_by_the_servers_method_with_its_body(path):
    assert _post(_app(), path) == {"by": f"hot {HOT_ROUTES[path]}", "body": '{"x": 1}'}


def test_other_methods_and_paths_go_through_the_router():
    app = _app()
    assert _post(app, "/predict", method="GET") == {"by": "router get"}
    assert _post(app, "/health") == {"by": "router"}


def test_a_route_prefix_is_stripped_before_matching():
    assert _post(_app(), "/predict", root_path="/model")["by"] == "hot predict"


def test_the_served_app_keeps_the_hot_routes_declared_and_answered_by_model_server():
    """OpenAPI and the docs come from the declared routes: each hot path is still one, and
    the method the middleware calls exists on the deployment's class."""
    paths = get_openapi(title="t", version="1", routes=api.routes)["paths"]
    for path, method in HOT_ROUTES.items():
        assert "post" in paths[path]
        assert callable(getattr(ModelServer.func_or_class, method))
    assert any(middleware.cls is HotRoutes for middleware in api.user_middleware)
