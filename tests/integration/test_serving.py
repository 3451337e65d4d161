"""Every route of the model server, against a real local Ray Serve serving a model registered in
a real MLflow server (fixtures `serve_app`, `registered_model`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from ml.data import load_frame
from ml.predict import LoadedModel, load_version
from tests.fixtures.ray_serve import ADMIN_TOKEN, ServeApp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def served(serve_app: ServeApp, http: httpx.Client) -> LoadedModel:
    """The served version, loaded in this process: the reference for every prediction."""
    import mlflow

    version = http.get("/version").json()["model_version"]
    mlflow.set_tracking_uri(serve_app.settings.mlflow_tracking_uri)
    return load_version(serve_app.model.name, version)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return load_frame("demo").drop(columns=["target"]).iloc[:25].reset_index(drop=True)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def _expected_labels(model: LoadedModel, frame: pd.DataFrame) -> list[Any]:
    return list(model.predict_frame(frame)["prediction"])


# --- health and version ----------------------------------------------------------------------


def test_health_reports_the_loaded_model_and_the_last_load(
    http: httpx.Client, serve_app: ServeApp
) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ready"
    assert body["model_uri"] == f"models:/{serve_app.model.name}/{serve_app.model.version}"
    assert body["last_load"]["status"] == "loaded"
    assert body["last_load"]["duration_s"] > 0


def test_version_names_model_version_run_and_load_time(
    http: httpx.Client, serve_app: ServeApp
) -> None:
    body = http.get("/version").json()
    assert body["model_name"] == serve_app.model.name
    assert body["model_version"] == serve_app.model.version
    assert body["run_id"]
    assert body["loaded_at"].startswith("20")
    assert http.get("/ping").status_code == 200


# --- /predict --------------------------------------------------------------------------------


def test_predict_one_record(http: httpx.Client, served: LoadedModel, rows: pd.DataFrame) -> None:
    response = http.post("/predict", json=_records(rows.iloc[:1])[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == served.version
    [prediction] = body["predictions"]
    assert prediction["label"] == _expected_labels(served, rows.iloc[:1])[0]
    expected = served.predict_proba(rows.iloc[:1])[0]
    got = [prediction["probabilities"][str(label)] for label in served.classes]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert len(prediction["prediction_id"]) == 32


def test_predict_a_list_matches_in_process_predictions(
    http: httpx.Client, served: LoadedModel, rows: pd.DataFrame
) -> None:
    body = http.post("/predict", json=_records(rows)).json()
    labels = [prediction["label"] for prediction in body["predictions"]]
    assert labels == _expected_labels(served, rows)
    ids = {prediction["prediction_id"] for prediction in body["predictions"]}
    assert len(ids) == len(rows)
    for prediction in body["predictions"]:
        assert math.isclose(sum(prediction["probabilities"].values()), 1.0, rel_tol=1e-9)


def test_null_is_a_missing_value_that_the_model_imputes(
    http: httpx.Client, rows: pd.DataFrame
) -> None:
    record = _records(rows.iloc[:1])[0]
    record[next(iter(record))] = None
    assert http.post("/predict", json=record).status_code == 200


def test_concurrent_single_records_are_batched_and_all_answered(
    http: httpx.Client, served: LoadedModel, rows: pd.DataFrame, serve_app: ServeApp
) -> None:
    """40 requests at once take the `@serve.batch` path; each gets its own row's answer."""
    import asyncio

    records = _records(rows)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve_app.base_url, timeout=60) as client:
            calls = [client.post("/predict", json=records[i % len(records)]) for i in range(40)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(fire())
    expected = _expected_labels(served, rows)
    for index, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == expected[index % len(records)]


# --- /invocations: MLflow's scoring protocol -------------------------------------------------


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_invocations_json_formats(
    http: httpx.Client, served: LoadedModel, rows: pd.DataFrame, fmt: str
) -> None:
    if fmt == "dataframe_split":
        payload: Any = json.loads(rows.to_json(orient="split", index=False))
    else:
        payload = _records(rows)
    response = http.post("/invocations", json={fmt: payload})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": _expected_labels(served, rows)}


def test_invocations_csv(http: httpx.Client, served: LoadedModel, rows: pd.DataFrame) -> None:
    response = http.post(
        "/invocations", content=rows.to_csv(index=False), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": _expected_labels(served, rows)}


def test_mlflow_scoring_client_gets_the_in_process_predictions(
    serve_app: ServeApp, served: LoadedModel, rows: pd.DataFrame
) -> None:
    """MLflow's own client, unchanged, against our endpoint."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    client = ScoringServerClient("127.0.0.1", serve_app.port)
    client.wait_server_ready(timeout=30)
    response = client.invoke(rows)
    got = list(response.get_predictions(predictions_format="ndarray"))
    assert got == _expected_labels(served, rows)


# --- /ws/predict -----------------------------------------------------------------------------


def test_websocket_streams_one_answer_per_message(
    serve_app: ServeApp, served: LoadedModel, rows: pd.DataFrame
) -> None:
    from websockets.sync.client import connect

    records = _records(rows.iloc[:3])
    url = serve_app.base_url.replace("http://", "ws://") + "/ws/predict"
    with connect(url, open_timeout=30) as socket:
        answers = []
        for record in records:
            socket.send(json.dumps(record))
            answers.append(json.loads(socket.recv(timeout=30)))
        socket.send(json.dumps({"no such feature": 1}))
        error = json.loads(socket.recv(timeout=30))
        socket.send(json.dumps(records))  # the stream survives a bad message
        batch = json.loads(socket.recv(timeout=30))
    expected = _expected_labels(served, rows.iloc[:3])
    assert [answer["predictions"][0]["label"] for answer in answers] == expected
    assert error["status"] == 422 and "no such feature" in error["error"]["field"]
    assert [prediction["label"] for prediction in batch["predictions"]] == expected


# --- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_schema_is_built_from_the_model_signature(
    http: httpx.Client, served: LoadedModel
) -> None:
    spec = http.get("/openapi.json").json()
    record = spec["components"]["schemas"]["Record"]
    assert list(record["properties"]) == list(served.feature_types)
    kinds = {"numeric": "number", "boolean": "boolean", "categorical": "string"}
    for column, kind in served.feature_types.items():
        assert record["properties"][column]["type"] == [kinds[kind], "null"]
    assert served.input_example is not None
    example = served.input_example.iloc[0]
    assert record["example"] == pytest.approx({c: float(example[c]) for c in example.index})
    predict_body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "application/json" in predict_body
    invocations_body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert set(invocations_body) == {"application/json", "text/csv"}
    labels = spec["components"]["schemas"]["PredictResponse"]["properties"]["predictions"]
    assert labels["items"]["properties"]["label"]["enum"] == served.classes


def test_docs_page_points_at_the_schema(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui" in page.text and "openapi.json" in page.text


# --- bad input: always 4xx naming the field, never 500 ------------------------------------------


def _first(rows: pd.DataFrame) -> dict[str, Any]:
    return _records(rows.iloc[:1])[0]


def _with(rows: pd.DataFrame, **changes: Any) -> dict[str, Any]:
    record = _first(rows)
    record.update(changes)
    return record


def _without(rows: pd.DataFrame, column: str) -> dict[str, Any]:
    record = _first(rows)
    del record[column]
    return record


BAD_PREDICT_BODIES = {
    "wrong type": (lambda r: json.dumps(_with(r, **{"mean radius": "big"})), 422, "mean radius"),
    "bool for number": (lambda r: json.dumps(_with(r, **{"mean area": True})), 422, "mean area"),
    "nested value": (lambda r: json.dumps(_with(r, **{"mean area": [1]})), 422, "mean area"),
    "missing feature": (lambda r: json.dumps(_without(r, "worst area")), 422, "worst area"),
    "unknown feature": (lambda r: json.dumps(_with(r, colour=1)), 422, "colour"),
    "NaN": (lambda r: json.dumps(_with(r, **{"mean texture": math.nan})), 422, "mean texture"),
    "Infinity": (lambda r: json.dumps(_with(r, **{"mean texture": math.inf})), 422, "mean texture"),
    "empty body": (lambda r: "", 422, "body"),
    "empty list": (lambda r: "[]", 422, "body"),
    "not JSON": (lambda r: "{not json", 400, "body"),
    "a number": (lambda r: "42", 422, "body"),
    "list of numbers": (lambda r: "[1, 2]", 422, "records[0]"),
    "over the row limit": (lambda r: json.dumps([_first(r)] * 10_001), 413, "body"),
    # found by schemathesis: finite JSON numbers that overflow once the pipeline scales them;
    # beyond float32's range, refused by validation naming the first such feature
    "overflowing values": (
        lambda r: json.dumps(dict.fromkeys(_first(r), 1e308)),
        422,
        "records[0].",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PREDICT_BODIES))
def test_bad_predict_input_is_a_4xx_naming_the_field(
    http: httpx.Client, rows: pd.DataFrame, case: str
) -> None:
    make_body, status, field = BAD_PREDICT_BODIES[case]
    response = http.post(
        "/predict", content=make_body(rows), headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert field in response.json()["field"]
    assert field in response.json()["detail"]


def test_wrong_content_type_is_415(http: httpx.Client, rows: pd.DataFrame) -> None:
    response = http.post(
        "/predict", content=json.dumps(_first(rows)), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["field"] == "content-type"


BAD_INVOCATIONS = {
    "top-level list": ("application/json", lambda r: json.dumps([_first(r)]), 400),
    "no format key": ("application/json", lambda r: json.dumps({"rows": [_first(r)]}), 400),
    "two format keys": (
        "application/json",
        lambda r: json.dumps({"inputs": [_first(r)], "instances": []}),
        400,
    ),
    "wrong type": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [_with(r, **{"mean radius": "x"})]}),
        400,
    ),
    "missing feature": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [_without(r, "worst area")]}),
        400,
    ),
    "unknown feature": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [_with(r, colour=1)]}),
        400,
    ),
    "empty body": ("application/json", lambda r: "", 400),
    "empty records": ("application/json", lambda r: json.dumps({"dataframe_records": []}), 400),
    "bad CSV column": ("text/csv", lambda r: "a,b\n1,2\n", 400),
    "not JSON": ("application/json", lambda r: "{oops", 400),
    "wrong content type": ("application/xml", lambda r: "<rows/>", 415),
    "nested value": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [_with(r, **{"mean radius": [1, 2]})]}),
        400,
    ),
    "overflowing values": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [dict.fromkeys(_first(r), 1e308)]}),
        400,
    ),
    "over the row limit": (
        "application/json",
        lambda r: json.dumps({"dataframe_records": [_first(r)] * 10_001}),
        413,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INVOCATIONS))
def test_bad_invocations_input_is_an_mlflow_style_4xx(
    http: httpx.Client, rows: pd.DataFrame, case: str
) -> None:
    content_type, make_body, status = BAD_INVOCATIONS[case]
    response = http.post(
        "/invocations", content=make_body(rows), headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] and body["message"]


# --- admin -----------------------------------------------------------------------------------


def test_admin_reload_needs_the_bearer_token(http: httpx.Client, serve_app: ServeApp) -> None:
    assert http.post("/admin/reload").status_code == 401
    wrong = http.post("/admin/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    ok = http.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["last_load"]["status"] == "loaded"
    assert http.get("/health").json()["status"] == "ready"


# --- telemetry -------------------------------------------------------------------------------


def test_each_prediction_emits_an_ecs_event(
    http: httpx.Client, serve_app: ServeApp, rows: pd.DataFrame
) -> None:
    body = http.post("/predict", json=_records(rows.iloc[:2])).json()
    wanted = {prediction["prediction_id"] for prediction in body["predictions"]}
    log_dir = serve_app.settings.log_dir
    assert log_dir is not None
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30  # the emitter flushes about once a second
    while time.monotonic() < deadline and set(found) != wanted:
        for path in log_dir.rglob("*.ndjson*"):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                prediction = event.get("mlops", {}).get("prediction", {})
                if prediction.get("id") in wanted:
                    found[prediction["id"]] = event
        time.sleep(0.5)
    assert set(found) == wanted
    event = found[next(iter(wanted))]
    assert event["event"]["dataset"] == "mlops.prediction"
    assert event["mlops"]["model"]["version"] == body["model_version"]
    assert event["mlops"]["prediction"]["route"] == "/predict"
    assert event["mlops"]["prediction"]["features"].keys() == set(rows.columns)
    assert http.get("/health").json()["telemetry_dropped"] == 0


def test_feedback_joins_outcomes_to_served_predictions(
    http: httpx.Client, serve_app: ServeApp, rows: pd.DataFrame
) -> None:
    """/predict ids, recorded by the replica off the request path, take outcomes on /feedback
    (admin token here); the store then joins them, probabilities included."""
    from ml.outcomes import OutcomeStore

    answer = http.post("/predict", json=json.loads(rows.head(3).to_json(orient="records")))
    predictions = answer.json()["predictions"]
    outcomes = [{"prediction_id": p["prediction_id"], "label": p["label"]} for p in predictions]
    assert http.post("/feedback", json=outcomes).status_code == 401
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + 30
    while True:  # the replica records predictions within moments; until then an id is unknown
        stored = http.post("/feedback", json=outcomes, headers=auth).json()
        if stored["stored"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stored["stored"] == 3, stored
    store = OutcomeStore(serve_app.settings.ct_database)
    joined = store.labelled(serve_app.model.name, limit=1000)
    truth = dict(zip(joined.prediction_ids, joined.truth))
    assert {p["prediction_id"]: truth.get(p["prediction_id"]) for p in predictions} == {
        p["prediction_id"]: p["label"] for p in predictions
    }
    mine = [
        row
        for pid, row in zip(joined.prediction_ids, joined.probabilities)
        if pid in truth and pid in {p["prediction_id"] for p in predictions}
    ]
    assert len(mine) == 3 and all(row and sum(row.values()) == pytest.approx(1.0) for row in mine)
    unknown = http.post(
        "/feedback", json={"prediction_id": "never-issued", "label": "x"}, headers=auth
    ).json()
    assert unknown["results"][0]["stored"] is False
