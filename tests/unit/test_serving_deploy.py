"""serving.deploy's one private Ray Serve call (`apply_config`): it must fail here, loudly, on a
Ray upgrade that changes it, rather than in `mlops serve`; and the reason it exists is
checked too, so the test says when the public API can do the job again.

No cluster here: tests/integration/test_serving.py and test_serving_swap.py deploy for real
through the same code.
"""

from __future__ import annotations

import inspect

import pytest


def test_the_private_serve_config_call_still_exists_with_its_signature() -> None:
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client  # pylint: disable=protected-access

    assert callable(_get_global_client)
    assert "raise_if_no_controller_running" in inspect.signature(_get_global_client).parameters
    parameters = list(inspect.signature(ServeControllerClient.deploy_apps).parameters)
    assert parameters[:3] == ["self", "config", "_blocking"], parameters


def test_public_serve_run_still_cannot_keep_a_deployment_version() -> None:
    """Why `apply_config` is private: with no way to pin a version, `serve.run` redeploys
    restart every replica instead of reconfiguring it. When this fails, Ray's public API
    can pin a version again: try `serve.run` for deploys."""
    from ray import serve

    class Model:  # pylint: disable=too-few-public-methods
        def __call__(self) -> str:
            return "ok"

    with pytest.raises(ValueError, match="version"):
        serve.deployment(version="1")(Model)
    with pytest.raises(ValueError, match="version"):
        serve.deployment(Model).options(version="1")


def test_serve_start_takes_every_cluster_wide_option_of_the_config() -> None:
    """`deploy` hands the config's proxy, HTTP, gRPC, logging and controller options to the
    public `serve.start`: every option it takes, under the names the config uses."""
    from ray import serve

    parameters = set(inspect.signature(serve.start).parameters)
    assert {
        "proxy_location",
        "http_options",
        "grpc_options",
        "logging_config",
        "controller_options",
    } <= parameters
