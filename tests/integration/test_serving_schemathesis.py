"""schemathesis against the served `/openapi.json`: requests generated from the schema the
model's signature built (valid ones and deliberately invalid ones) never get a 5xx.
Real Ray Serve, real MLflow server.

Driven through schemathesis' Python API with hypothesis (its pytest plugin does not load under
pytest 9): every operation, both generation modes, a fixed number of examples each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.ray_serve import ServeApp

pytestmark = pytest.mark.integration

EXAMPLES = 100  # per operation and mode; hypothesis stops early where inputs are few (GETs)


def test_no_generated_request_gets_a_server_error(serve_app: ServeApp) -> None:
    schema = schemathesis.openapi.from_url(f"{serve_app.base_url}/openapi.json", wait_for_schema=60)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /predict", "POST /invocations", "GET /health", "GET /version"} <= labels
    sent: Counter[int] = Counter()
    server_errors: list[str] = []
    for operation in operations:
        for mode in GenerationMode:
            _exercise(operation, mode, serve_app.base_url, sent, server_errors)
    assert not server_errors, server_errors[:5]
    assert sum(sent.values()) >= 250, sent
    assert any(400 <= status < 500 for status in sent), "no invalid request was generated"


def _exercise(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    sent: Counter[int],
    server_errors: list[str],
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=60)
        sent[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.method} {case.path} {mode.value} -> "
                f"{response.status_code}: {response.text[:200]} "
                f"(body {str(case.body)[:200]})"
            )

    try:
        check()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without inputs (GET /health).
        if mode is not GenerationMode.NEGATIVE:
            raise
