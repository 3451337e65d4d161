"""Load test of the served champion: `make loadtest` (50 users, 60 s, headless, reports under
var/reports/). Any non-200 answer, or a prediction without a label, counts as a failure.

Rows come from the bundled demo data, which is what `make run` trains on; point
`MLOPS_LOADTEST_DATA` at a CSV of feature rows to load-test a model trained on other data.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser


def _rows() -> list[dict[str, Any]]:
    import pandas as pd

    from ml.data import load_frame

    source = os.environ.get("MLOPS_LOADTEST_DATA")  # a locust-side knob, not an app setting
    frame = pd.read_csv(source) if source else load_frame("demo").drop(columns=["target"])
    return json.loads(frame.to_json(orient="records"))


ROWS = _rows()
JSON = {"content-type": "application/json"}


class PredictUser(FastHttpUser):
    """Mostly single records (the batched path), some lists and MLflow-protocol calls."""

    wait_time = between(0.01, 0.05)

    @task(8)
    def predict_one(self) -> None:
        self._check("/predict", random.choice(ROWS), expected=1)

    @task(1)
    def predict_list(self) -> None:
        self._check("/predict", random.sample(ROWS, 10), expected=10)

    @task(1)
    def invocations(self) -> None:
        records = random.sample(ROWS, 5)
        with self.client.post(
            "/invocations",
            data=json.dumps({"dataframe_records": records}),
            headers=JSON,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif len(response.json().get("predictions", [])) != len(records):
                response.failure("wrong number of predictions")

    def _check(self, path: str, body: Any, expected: int) -> None:
        with self.client.post(
            path, data=json.dumps(body), headers=JSON, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            predictions = response.json().get("predictions", [])
            if len(predictions) != expected or any("label" not in p for p in predictions):
                response.failure("a prediction is missing")
