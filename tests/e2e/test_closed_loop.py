"""Continuous training's closed loop on a real local stack, driven as a user drives it.

`mlops train` registers v1 in a real `mlflow server`; `mlops serve` serves it on a detached
local Ray cluster (2 replicas, HAProxy, the Ray dashboard for the Jobs API), predictions are
recorded in the CT database (SQLite under the stack's var/), outcomes come in through
`POST /feedback`, and `mlops ct run` (the command Jenkins and the CronJob run) decides.

1. Healthy traffic, labelled as the model predicts the world: `ct run` does nothing and says so.
2. The world flips (the generated relation reversed) and the outcomes say so: `ct run` fires
   the performance trigger alone, retrains on the source plus the labelled feedback, the gate
   promotes v2, and serving answers v2 with no failed request during the swap.
3. `POST /admin/retrain`: 401, 403, 202 then 409 while the job runs, and the Ray job ends
   with a new version, readable from `GET /admin/retrain/{id}`.

Budgets are small (logistic regression, 2 trials, a few hundred rows) to keep CI short.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from serving.local_cluster import stop_local_cluster
from tests.conftest import REPO_ROOT
from tests.fixtures.mlflow_server import MlflowServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "closed-loop"
ADMIN = "closed-loop-admin"  # noqa: S105 - throwaway tokens of this test's own stack
FEEDBACK = "closed-loop-feedback"  # noqa: S105
FEATURES = ["f0", "f1", "f2", "f3"]
SOURCE_ROWS = 300
HEALTHY_ROWS = 200
FLIPPED_ROWS = 600


def world(rows: int, seed: int, flipped: bool = False) -> pd.DataFrame:
    """Four features; the label is whether f0 + f1 / 2 is positive (or, flipped, negative)."""
    generator = np.random.default_rng(seed)
    frame = pd.DataFrame(generator.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    positive = (frame["f0"] + frame["f1"] / 2 > 0).astype(int)
    frame["y"] = 1 - positive if flipped else positive
    return frame


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    var_dir: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def mlops(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "serving.main", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert result.returncode == 0, f"mlops {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def served_version(self) -> str:
        return str(self.client.get(f"{self.base_url}/version").json()["model_version"])

    def champion(self) -> str:
        return (
            MlflowClient(self.env["MLFLOW_TRACKING_URI"])
            .get_model_version_by_alias(MODEL, "champion")
            .version
        )

    def predict(self, frame: pd.DataFrame) -> list[str]:
        """Serve `frame`'s features in requests of 100 rows; the prediction ids."""
        ids: list[str] = []
        for start in range(0, len(frame), 100):
            records = frame[FEATURES].iloc[start : start + 100].to_dict("records")
            answer = self.client.post(f"{self.base_url}/predict", json=records)
            assert answer.status_code == 200, answer.text
            ids += [item["prediction_id"] for item in answer.json()["predictions"]]
        return ids

    def feedback(self, ids: list[str], labels: list[int]) -> None:
        """Report every outcome; ids whose prediction is not written yet (recording is off the
        request path) are sent again until stored."""
        pending = dict(zip(ids, labels))
        headers = {"Authorization": f"Bearer {FEEDBACK}"}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            body = [{"prediction_id": key, "label": value} for key, value in pending.items()]
            for start in range(0, len(body), 500):
                answer = self.client.post(
                    f"{self.base_url}/feedback", json=body[start : start + 500], headers=headers
                )
                if answer.status_code == 429:
                    time.sleep(float(answer.headers["Retry-After"]))
                    continue
                assert answer.status_code == 200, answer.text
                for result in answer.json()["results"]:
                    if result["stored"]:
                        pending.pop(result["prediction_id"], None)
            if pending:
                time.sleep(1)
        assert not pending, f"{len(pending)} outcomes never stored"


@pytest.fixture(scope="module")
def stack(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """v1 trained on the source world and served by `mlops serve`; stopped at the end."""
    root = tmp_path_factory.mktemp("closed-loop")
    source = root / "source.csv"
    world(SOURCE_ROWS, seed=1).to_csv(source, index=False)
    port = free_port()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLOPS_", "RAY_"))
    }
    env.update(
        {
            "MLOPS_VAR_DIR": str(root / "var"),
            "MLFLOW_TRACKING_URI": mlflow_server.uri,
            "MLOPS_MODEL_NAME": MODEL,
            "MLOPS_DATA": str(source),
            "MLOPS_TARGET": "y",
            "MLOPS_FAMILIES": "logreg",
            "MLOPS_TRIALS": "2",
            "MLOPS_TIMEOUT_S": "120",
            "MLOPS_ADMIN_TOKEN": ADMIN,
            "MLOPS_FEEDBACK_TOKEN": FEEDBACK,
            "MLOPS_SERVE_PORT": str(port),
            "MLOPS_RAY_DASHBOARD_PORT": str(free_port()),
            "MLOPS_CT_MIN_LABELS": "100",
            "MLOPS_CT_MAX_FEEDBACK_ROWS": str(FLIPPED_ROWS),
            "MLOPS_DESKTOP_NOTIFICATIONS": "false",
        }
    )
    stack = Stack(env, f"http://127.0.0.1:{port}", root / "var")
    stack.mlops("train")
    try:
        stack.mlops("serve")
        yield stack
    finally:
        stack.client.close()
        # The cluster's processes, stopped directly: Serve's graceful drain (`mlops
        # serve-stop`, tested with `make stop`) would add a minute to CI here.
        stop_local_cluster(stack.var_dir / "serve")


class Traffic:
    """Single-row `/predict` requests in a loop until stopped: statuses, versions, latencies."""

    def __init__(self, stack: Stack, rows: pd.DataFrame) -> None:
        self._stack, self._records = stack, rows[FEATURES].to_dict("records")
        self._stop = threading.Event()
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.latencies_ms: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            index = 0
            while not self._stop.is_set():
                record = self._records[index % len(self._records)]
                index += 1
                started = time.perf_counter()
                try:
                    answer = client.post(f"{self._stack.base_url}/predict", json=record)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                else:
                    self.versions.add(str(answer.json()["model_version"]))

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))


def test_healthy_outcomes_leave_everything_as_it_was(stack: Stack) -> None:
    healthy = world(HEALTHY_ROWS, seed=2)
    ids = stack.predict(healthy)
    stack.feedback(ids, healthy["y"].tolist())

    result = stack.mlops("ct", "run")
    assert "ct run: no_trigger: no trigger fired" in result.stdout, result.stdout
    assert stack.champion() == "1"
    assert stack.served_version() == "1"
    verdicts = json.loads(stack.mlops("ct", "check", "--json").stdout)
    performance = next(item for item in verdicts["results"] if item["trigger"] == "performance")
    assert performance["enough_evidence"] and not performance["fired"], performance
    assert performance["evidence"]["labelled"] == HEALTHY_ROWS


def test_a_flipped_world_retrains_promotes_and_serving_follows_without_a_failure(
    stack: Stack,
) -> None:
    flipped = world(FLIPPED_ROWS, seed=3, flipped=True)
    ids = stack.predict(flipped)
    stack.feedback(ids, flipped["y"].tolist())

    with Traffic(stack, flipped) as traffic:
        result = stack.mlops("ct", "run")
        deadline = time.monotonic() + 120
        while stack.served_version() != "2" and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(2)  # requests on both replicas after the swap
    assert "ct run: trained: performance fired" in result.stdout, result.stdout
    assert "gate: promoted" in result.stdout, result.stdout
    assert stack.champion() == "2"
    assert stack.served_version() == "2"
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.versions == {"1", "2"}, traffic.versions
    run = MlflowClient(stack.env["MLFLOW_TRACKING_URI"]).get_run(
        MlflowClient(stack.env["MLFLOW_TRACKING_URI"]).get_model_version(MODEL, "2").run_id
    )
    assert run.data.tags["ct.triggers"] == "performance"
    assert run.data.tags["ct.previous_champion"] == "1"
    assert int(run.data.tags["ct.feedback_rows"]) == FLIPPED_ROWS
    print(
        f"\nswap under load: {len(traffic.latencies_ms)} requests, 0 failed, "
        f"median {statistics.median(traffic.latencies_ms):.1f} ms, p99 {traffic.p99_ms():.1f} ms"
    )


def test_admin_retrain_runs_a_ray_job_one_at_a_time(stack: Stack) -> None:
    url = f"{stack.base_url}/admin/retrain"
    assert stack.client.post(url).status_code == 401
    assert stack.client.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN}"}
    before = len(
        MlflowClient(stack.env["MLFLOW_TRACKING_URI"]).search_model_versions(f"name='{MODEL}'")
    )

    with Traffic(stack, world(50, seed=4, flipped=True)) as traffic:
        accepted = stack.client.post(url, headers=admin)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["job_id"]
        assert accepted.headers["Location"] == f"/admin/retrain/{job}"
        second = stack.client.post(url, headers=admin)
        assert second.status_code == 409 and job in second.json()["detail"], second.text
        assert stack.client.get(f"{url}/{job}").status_code == 401

        deadline = time.monotonic() + 300
        status = stack.client.get(f"{url}/{job}", headers=admin).json()
        while status["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            time.sleep(2)
            status = stack.client.get(f"{url}/{job}", headers=admin).json()
    assert status["status"] == "SUCCEEDED", status
    result = status["result"]
    assert (result["outcome"], result["request_id"]) == ("trained", job), result
    assert "manual" in result["triggers"].split(",")
    assert int(result["trained_version"]) == before + 1
    expected_champion = result["trained_version"] if result["promoted"] else "2"
    assert stack.champion() == expected_champion, "the result says what the gate did"
    assert traffic.failures == [], traffic.failures[:5]
    assert stack.client.get(f"{url}/retrain-unknown", headers=admin).status_code == 404
    print(
        f"\nserving during the retrain job: {len(traffic.latencies_ms)} requests, 0 failed, "
        f"median {statistics.median(traffic.latencies_ms):.1f} ms, p99 {traffic.p99_ms():.1f} ms"
    )
