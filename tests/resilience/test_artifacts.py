"""A registered model's files corrupted or deleted in the real MLflow server's artifact store.

The version's sha256 was recorded as a tag when it was registered (`ml.training`); loading
(`ml.predict.load_version`, what a replica calls) compares the files it downloaded with it and
refuses with the reason. A replica's `ModelService` (no Ray needed) then keeps serving the model
it had and `/health`'s `last_load` says why. A version registered before the tag existed loads
with a warning.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ml.common.tracking import configure_tracking
from ml.data import split
from ml.integrity import DIGEST_TAG
from ml.pipeline import load_data
from ml.predict import UNCHECKED, load_version
from ml.registry import RegistryError
from ml.training import log_and_register
from serving.schemas import ServingOptions
from serving.service import ModelService
from tests.fixtures.mlflow_server import StoppableMlflowServer
from tests.fixtures.trained_model import RegisteredModel
from tests.unit.serving_support import TelemetryCollector

pytestmark = [pytest.mark.resilience, pytest.mark.integration]


def register_copy(model: RegisteredModel) -> str:
    """The champion's fitted pipeline registered again, through the pipeline's own code: a
    version of its own to damage."""
    settings = model.settings
    configure_tracking(settings)
    dataset = load_data(settings)
    holdout = split(dataset, settings.test_size, settings.seed)
    with mlflow.start_run(run_name="copy-to-damage"):
        trained = log_and_register(
            model.result.trained.model, model.result.tuning.best_params, dataset, holdout, settings
        )
    return trained.version


def stored_files(server: StoppableMlflowServer, name: str, version: str) -> Path:
    """Where the server keeps the version's model files (`models:/m-<id>` -> its directory)."""
    model_id = MlflowClient(server.uri).get_model_version(name, version).source.rsplit("/", 1)[1]
    [directory] = server.root.glob(f"artifacts/*/models/{model_id}/artifacts")
    return directory


@pytest.fixture
def service(stoppable_model: RegisteredModel) -> Iterator[ModelService]:
    """A replica's model service with the real loader, serving the champion (version 1)."""
    configure_tracking(stoppable_model.settings)
    service = ModelService(stoppable_model.settings, load_version, TelemetryCollector())
    asyncio.run(service.apply(ServingOptions(model_uri=f"models:/{stoppable_model.name}/1")))
    yield service
    gc.unfreeze()  # a load freezes what exists, as in a replica


def test_a_damaged_model_is_refused_with_the_reason_and_the_old_one_keeps_serving(
    stoppable_model: RegisteredModel,
    stoppable_mlflow_server: StoppableMlflowServer,
    service: ModelService,
) -> None:
    assert service.last_load["integrity"] == "sha256 verified"
    name = stoppable_model.name
    damaged = register_copy(stoppable_model)
    model_file = stored_files(stoppable_mlflow_server, name, damaged) / "model.skops"
    original = model_file.read_bytes()
    copy_uri = f"models:/{name}/{damaged}"

    model_file.write_bytes(original[:-64] + b"\0" * 64)  # same size, other bytes
    with pytest.raises(RegistryError, match="model files changed since registration"):
        load_version(name, damaged)
    asyncio.run(service.apply(ServingOptions(model_uri=copy_uri)))
    health = service.health({}).body
    assert (health["status"], health["model_uri"]) == ("ready", f"models:/{name}/1")
    assert health["last_load"]["status"] == "failed"
    assert f"refusing to load {copy_uri}: model files changed" in health["last_load"]["error"]

    model_file.unlink()  # deleted
    asyncio.run(service.apply(ServingOptions(model_uri=copy_uri)))
    health = service.health({}).body
    assert health["model_uri"] == f"models:/{name}/1"
    assert "model files changed since registration" in health["last_load"]["error"]

    model_file.write_bytes(original)  # restored: the same version loads again
    asyncio.run(service.apply(ServingOptions(model_uri=copy_uri)))
    assert service.health({}).body["model_uri"] == copy_uri


def test_a_version_registered_without_a_digest_loads_with_a_warning(
    stoppable_model: RegisteredModel, caplog: pytest.LogCaptureFixture
) -> None:
    configure_tracking(stoppable_model.settings)
    client = MlflowClient()
    name = stoppable_model.name
    legacy = register_copy(stoppable_model)
    digest = client.get_model_version(name, legacy).tags[DIGEST_TAG]
    client.delete_model_version_tag(name, legacy, DIGEST_TAG)  # as before the tag existed
    try:
        with caplog.at_level(logging.WARNING, logger="ml.predict"):
            loaded = load_version(name, legacy)
    finally:  # it holds the challenger alias: whole again for the other fault tests
        client.set_model_version_tag(name, legacy, DIGEST_TAG, digest)
    assert loaded.integrity == UNCHECKED
    assert f"models:/{name}/{legacy}: unchecked: no {DIGEST_TAG} tag" in caplog.text
