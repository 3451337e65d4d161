"""Fault matrix, row "the API contract": `schemathesis run --checks all` against the served
`/openapi.json` passes with several seeds (every status code, content type and bound the server
uses is in the schema, no 5xx for any input), and the JSON nesting bomb is a 400 on every route
that parses JSON. Real Ray Serve serving a model registered in a real MLflow server.

schemathesis runs as its CLI, exactly the command a user runs (docs/reliability.md), in a
temporary directory (its example database and reports stay there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.fixtures.ray_serve import ADMIN_TOKEN, ServeApp
from tests.resilience.serving_load import report

pytestmark = pytest.mark.resilience

SEEDS = [987, 1, 2026]  # 987: the run that found the four contract failures
EXAMPLES = 15  # per operation, fuzzing phase; the coverage phase adds its boundary cases
NESTING_BOMB = b"[" * 100_000


@pytest.mark.parametrize("seed", SEEDS)
def test_schemathesis_checks_all_pass(serve_app: ServeApp, seed: int, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{serve_app.base_url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(seed),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--wait-for-schema",
        "60",
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    failures = done.stdout.find("FAILURES")
    summary = done.stdout[failures:][:6000] if failures >= 0 else done.stdout[-3000:]
    assert done.returncode == 0, f"schemathesis seed {seed} failed:\n{summary}\n{done.stderr}"
    report("api_contract", seed=seed, summary=summary.strip().splitlines()[-1])


def _bomb(client: httpx.Client, path: str, **headers: str) -> httpx.Response:
    return client.post(
        path, content=NESTING_BOMB, headers={"content-type": "application/json", **headers}
    )


def test_a_json_nesting_bomb_is_a_400_on_every_json_route(serve_app: ServeApp) -> None:
    with httpx.Client(base_url=serve_app.base_url, timeout=60) as client:
        answers = {
            "/predict": _bomb(client, "/predict"),
            "/invocations": _bomb(client, "/invocations"),
            "/feedback": _bomb(client, "/feedback", authorization=f"Bearer {ADMIN_TOKEN}"),
        }
    ws_url = serve_app.base_url.replace("http://", "ws://") + "/ws/predict"
    with connect(ws_url, max_size=None) as websocket:
        websocket.send(NESTING_BOMB.decode())
        ws_answer = json.loads(websocket.recv(timeout=60))
    statuses = {path: response.status_code for path, response in answers.items()}
    assert statuses == dict.fromkeys(answers, 400), {p: r.text[:300] for p, r in answers.items()}
    assert answers["/predict"].json()["field"] == "body"
    assert "nested too deeply" in answers["/predict"].json()["detail"]
    assert "nested too deeply" in answers["/invocations"].json()["message"]
    assert ws_answer["status"] == 400, ws_answer
    report("nesting_bomb", statuses={**statuses, "/ws/predict": ws_answer["status"]})
