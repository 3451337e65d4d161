"""Issue 23: a registered model scores the raw rows it was trained on through MLflow itself.

A mixed telecom-like CSV (yes/no plan, a state, integer counts, float minutes with gaps) is
trained through the real pipeline into the session's MLflow server. The same raw rows then go
through our server's `/invocations` (the session's Ray Serve, redeployed with this model),
a real `mlflow models serve --env-manager local` process, and `mlflow.pyfunc.load_model`:
the three answers must be identical, and equal to in-process scoring.

A mixed-type regression CSV (a district, a yes/no garden, integer rooms, float area with
gaps, a continuous price) goes the same way: pipeline, promoted, then the same raw rows give
the same values through pyfunc, our `/invocations` and `mlflow models serve`.

A version logged the old way (signature of the coerced columns, no coercion step) still
loads, serves and goes through the promotion gate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from ml.data import Split, load_dataset, split
from ml.families import family
from ml.features import CoerceFeatures, without_coercion
from ml.model_ref import ModelRef
from ml.predict import load_version
from ml.registry import CHAMPION, load_pipeline, run_gate
from ml.training import MODEL_ARTIFACT, model_metadata, pinned_requirements
from tests.fixtures.mixed_csv import PRICE, TARGET, write_churn_csv, write_price_csv
from tests.fixtures.mlflow_server import MlflowServer, free_port, stop_process, wait_http
from tests.fixtures.ray_serve import ServeApp
from tests.fixtures.trained_model import RegisteredModel, train_into

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "churn-native"


@dataclass(frozen=True)
class Churn:
    trained: RegisteredModel
    csv: Path
    raw: pd.DataFrame  # the CSV's feature columns as pandas reads them

    @property
    def uri(self) -> str:
        return ModelRef(MODEL, self.trained.version).uri

    def body(self) -> dict[str, Any]:
        """MLflow's `dataframe_split` of the raw rows (a gap is a JSON null)."""
        return {"dataframe_split": json.loads(self.raw.to_json(orient="split", index=False))}


@pytest.fixture(scope="module")
def churn(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Churn:
    tmp = tmp_path_factory.mktemp("churn")
    csv = write_churn_csv(tmp / "churn.csv")
    trained = train_into(
        mlflow_server, tmp / "var", model_name=MODEL, data=str(csv), target=TARGET, trials=2
    )
    return Churn(trained, csv, pd.read_csv(csv).drop(columns=TARGET))


@pytest.fixture(scope="module")
def our_server(serve_app: ServeApp) -> Iterator[Callable[[str], str]]:
    """Deploys a version of this model on the session's Ray Serve (no new cluster) and gives
    its base URL; the session's model is served again once this module is done."""

    def deploy(version: str, model_name: str = MODEL) -> str:
        serve_app.deploy(version, model_name=model_name)
        return serve_app.base_url

    yield deploy
    serve_app.deploy(serve_app.model.version)


@pytest.fixture(autouse=True)
def _tracking(mlflow_server: MlflowServer) -> None:
    """The session's server for every test (conftest resets MLflow's globals after each)."""
    mlflow.set_tracking_uri(mlflow_server.uri)


def invocations(base_url: str, body: dict[str, Any]) -> list[Any]:
    response = httpx.post(f"{base_url}/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@contextmanager
def models_serve(uri: str, tracking_uri: str, log_path: Path) -> Iterator[str]:
    """A real `mlflow models serve` of a registered version on a free port, in this
    environment (`--env-manager local`); its base URL. Stopped, with its workers, on exit."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        # It starts `uvicorn` by name: this environment's, as an activated venv would.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = log_path.open("w")
    # Its own process group: the uvicorn workers it starts stop with it.
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout_s=120, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        stop_process(process)
        log.close()


@pytest.fixture
def mlflow_models_serve(churn: Churn, mlflow_server: MlflowServer) -> Iterator[str]:
    """`mlflow models serve` of the churn model's registered version."""
    with models_serve(churn.uri, mlflow_server.uri, churn.csv.parent / "models-serve.log") as url:
        yield url


def test_signature_describes_the_raw_columns(churn: Churn) -> None:
    inputs = mlflow.models.get_model_info(churn.uri).signature.inputs
    types = {spec.name: spec.type.name for spec in inputs.inputs}
    assert types == {
        "State": "string",
        "International plan": "string",  # yes/no, as in the file
        "Customer service calls": "long",
        "Account length": "long",
        "Total day minutes": "double",
    }
    assert not next(spec for spec in inputs.inputs if spec.name == "Total day minutes").required
    assert isinstance(load_pipeline(churn.trained.result.trained.ref)[0], CoerceFeatures)


def test_raw_rows_get_one_answer_from_our_server_mlflow_serve_and_pyfunc(
    churn: Churn, our_server: Callable[[str], str], mlflow_models_serve: str
) -> None:
    expected = list(
        load_version(MODEL, churn.trained.version).predict_frame(churn.raw)["prediction"]
    )
    pyfunc = mlflow.pyfunc.load_model(churn.uri).predict(churn.raw).tolist()
    from_mlflow = invocations(mlflow_models_serve, churn.body())
    ours = invocations(our_server(churn.trained.version), churn.body())
    assert set(expected) == {True, False}  # both classes predicted: a real comparison
    assert ours == expected
    assert pyfunc == expected
    assert from_mlflow == expected


# --- versions registered before the change ----------------------------------------------------


def log_the_old_way(pipeline: Any, churn: Churn, holdout_split: Split) -> str:
    """What `log_and_register` did before issue 23: the bare pipeline with the signature and
    input example of the coerced training columns. Returns the registered version."""
    dataset = load_dataset(str(churn.csv), TARGET)
    params = churn.trained.result.tuning.best_params
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            signature=infer_signature(
                holdout_split.X_train, pd.Series(pipeline.predict(holdout_split.X_train.head(20)))
            ),
            input_example=holdout_split.X_train.head(3),
            registered_model_name=MODEL,
            serialization_format="skops",
            skops_trusted_types=list(family(params["family"]).skops_trusted_types),
            pip_requirements=pinned_requirements(),
            metadata=model_metadata(dataset, pipeline, params),
        )
    return str(info.registered_model_version)


def test_a_version_logged_the_old_way_loads_serves_and_is_gated(
    churn: Churn, our_server: Callable[[str], str]
) -> None:
    settings = churn.trained.settings
    dataset = load_dataset(str(churn.csv), TARGET)
    holdout_split = split(dataset, settings.test_size, settings.seed)
    bare = without_coercion(load_pipeline(churn.trained.result.trained.ref))
    old = log_the_old_way(bare, churn, holdout_split)

    with pytest.raises(MlflowException, match="International plan"):  # issue 23, as it was
        mlflow.pyfunc.load_model(ModelRef(MODEL, old).uri).predict(churn.raw)

    loaded = load_version(MODEL, old)
    # nothing to strip: the same steps (estimators compare by identity, so by name and type)
    assert [(name, type(step)) for name, step in loaded.model.steps] == [
        (name, type(step)) for name, step in bare.steps
    ]
    expected = list(
        load_version(MODEL, churn.trained.version).predict_frame(churn.raw)["prediction"]
    )
    assert list(loaded.predict_frame(churn.raw)["prediction"]) == expected
    assert invocations(our_server(old), churn.body()) == expected

    # The old version as champion, the new one challenging: both score the same holdout.
    client = MlflowClient()
    client.set_registered_model_alias(MODEL, CHAMPION, old)
    decision = run_gate(client, MODEL, churn.trained.version, holdout_split, "roc_auc", 0.0)
    assert decision.champion_version == old
    assert decision.champion_score == decision.challenger_score  # the same fitted pipeline
    assert not decision.promoted


# --- regression ---------------------------------------------------------------------------------

REGRESSOR = "price-native"


@pytest.fixture(scope="module")
def price(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Churn:
    """The regression CSV through the real pipeline: task inferred, 4 trials over the three
    regression families (their defaults queued first, then one TPE trial)."""
    tmp = tmp_path_factory.mktemp("price")
    csv = write_price_csv(tmp / "price.csv")
    trained = train_into(
        mlflow_server,
        tmp / "var",
        model_name=REGRESSOR,
        data=str(csv),
        target=PRICE,
        trials=4,
        families=["ridge", "random_forest_regressor", "hist_gb_regressor"],
    )
    return Churn(trained, csv, pd.read_csv(csv).drop(columns=PRICE))


def test_a_regressor_is_promoted_and_gives_one_answer_everywhere(
    price: Churn, our_server: Callable[..., str], mlflow_server: MlflowServer
) -> None:
    result = price.trained.result
    assert result.report.task == "regression", result.report.task_reason
    assert result.decision.promoted and result.decision.metric == "rmse"
    version = result.trained.version
    client = MlflowClient()
    assert client.get_model_version(REGRESSOR, version).tags["task"] == "regression"
    assert str(client.get_model_version_by_alias(REGRESSOR, CHAMPION).version) == version
    assert set(result.trained.holdout) == {"rmse", "mae", "r2", "mape"}  # no price is 0
    artifacts = {item.path for item in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/residuals.png", "plots/predicted_vs_actual.png"} <= artifacts

    uri = ModelRef(REGRESSOR, version).uri
    expected = load_version(REGRESSOR, version).predict_frame(price.raw)["prediction"].tolist()
    pyfunc = mlflow.pyfunc.load_model(uri).predict(price.raw).tolist()
    base_url = our_server(version, REGRESSOR)
    ours = invocations(base_url, price.body())
    with models_serve(uri, mlflow_server.uri, price.csv.parent / "models-serve.log") as served:
        from_mlflow = invocations(served, price.body())
    assert len(set(expected)) > len(expected) // 2  # values, not a few classes
    assert all(isinstance(value, float) for value in ours)
    assert ours == expected
    assert pyfunc == expected
    assert from_mlflow == expected

    record = price.raw.iloc[1].to_dict()  # row 0 has a gap: JSON has no NaN
    answer = httpx.post(f"{base_url}/predict", json=record, timeout=60)
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["predictions"]
    assert set(row) == {"prediction_id", "value"} and row["value"] == expected[1]
    assert httpx.get(f"{base_url}/version", timeout=30).json()["task"] == "regression"
