"""Start, update and stop serving: what `mlops serve`, the after-promotion swap, the test
fixtures and the benchmarks all call.

`start_serving` resolves `champion` to a version number, renders `serving/serve_config.yaml` for
it into `var/serve/serve_config.yaml` (the deployed config, kept for updates), starts a detached
local Ray cluster if none runs (HAProxy mode, dashboard on 127.0.0.1) and deploys.
`update_serving` redeploys that config with another version (replicas reload in place);
`stop_serving` shuts Serve and the local cluster down.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ml.config import Settings
from ml.model_ref import ModelRef

DEPLOYED_CONFIG = "serve_config.yaml"


@dataclass(frozen=True)
class Serving:
    """Where the model is served and which version."""

    base_url: str
    model_uri: str
    version: str
    dashboard_url: str | None

    def urls(self) -> dict[str, str]:
        urls = {
            "docs": f"{self.base_url}/docs",
            "predict": f"{self.base_url}/predict",
            "invocations": f"{self.base_url}/invocations",
            "health": f"{self.base_url}/health",
        }
        if self.dashboard_url:
            urls["ray dashboard"] = self.dashboard_url
        return urls


def serve_dir(settings: Settings) -> Path:
    return settings.var_dir / "serve"


def base_url(settings: Settings, port: int | None = None) -> str:
    return f"http://{settings.serve_host}:{port or settings.serve_port}"


def config_path(settings: Settings) -> Path:
    """The configured Serve config; the packaged one when a relative path is not found."""
    path = settings.serve_config
    if not path.is_absolute() and not path.exists():
        return Path(__file__).with_name("serve_config.yaml")
    return path


def resolve_model_uri(settings: Settings, version: str | None = None) -> str:
    """`models:/<name>/<version>` for the given version, or for the current champion."""
    from ml.common.tracking import configure_tracking
    from ml.predict import resolve_version

    configure_tracking(settings)
    return ModelRef(settings.model_name, version or resolve_version(settings.model_name)).uri


def start_serving(
    settings: Settings,
    *,
    version: str | None = None,
    port: int | None = None,
    num_replicas: int | None = None,
    num_cpus: float | None = None,
    local_cluster: bool = True,
    timeout_s: float = 300.0,
) -> Serving:
    """Deploy the champion (or `version`). With `local_cluster`, start/attach the detached local
    Ray cluster; without it, use the Ray this process is already connected to (tests)."""
    from serving import deploy, local_cluster as cluster

    state_dir = serve_dir(settings)
    if local_cluster:
        cluster.prepare_driver(state_dir)  # before anything below imports Ray
    model_uri = resolve_model_uri(settings, version)
    rendered = deploy.render_config(
        deploy.read_config(config_path(settings)),
        model_uri=model_uri,
        settings=settings,
        port=port,
        num_replicas=num_replicas,
        num_cpus=num_cpus,
    )
    dashboard = None
    if local_cluster:
        cluster.start_local_cluster(
            state_dir, settings.serve_num_cpus, settings.ray_dashboard_port, settings.serve_haproxy
        )
        cluster.connect(state_dir)
        dashboard = f"http://127.0.0.1:{settings.ray_dashboard_port}"
    else:
        import ray

        if not ray.is_initialized():
            raise deploy.ServeError("not connected to a Ray cluster")
    deploy.deploy(rendered, timeout_s=timeout_s)
    deploy.write_config(rendered, state_dir / DEPLOYED_CONFIG)
    url = base_url(settings, rendered["http_options"]["port"])
    target = ModelRef.parse(model_uri).version
    deploy.wait_version(url, target, timeout_s)
    return Serving(url, model_uri, target, dashboard)


def update_serving(
    settings: Settings, version: str | None = None, timeout_s: float = 300.0
) -> Serving:
    """Redeploy the running app with the champion (or `version`): a user_config change, so
    replicas reload in place one at a time and keep serving."""
    from serving import deploy, local_cluster as cluster

    deployed_path = serve_dir(settings) / DEPLOYED_CONFIG
    if not deployed_path.is_file():
        raise deploy.ServeError(
            "serving is not running here (no var/serve/serve_config.yaml): "
            "start it with `mlops serve`"
        )
    rendered = deploy.read_config(deployed_path)
    url = base_url(settings, rendered["http_options"]["port"])
    if deploy.serving_version(url) is None:
        raise deploy.ServeError(f"nothing answers at {url}: start serving with `mlops serve`")
    model_uri = resolve_model_uri(settings, version)
    deploy.model_deployment(rendered)["user_config"]["model_uri"] = model_uri
    if not _connected_to_ray():
        cluster.connect(serve_dir(settings))
    deploy.deploy(rendered, timeout_s=timeout_s)
    deploy.write_config(rendered, deployed_path)
    target = ModelRef.parse(model_uri).version
    deploy.wait_version(url, target, timeout_s)
    return Serving(url, model_uri, target, None)


def _connected_to_ray() -> bool:
    """Asked without importing Ray: a process that has not imported it is not connected, and
    must set the cluster's auth mode before it does (`local_cluster.connect`)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def stop_serving(settings: Settings) -> str:
    """Shut Serve down and stop the local Ray cluster `mlops serve` started here."""
    from serving import local_cluster as cluster

    state_dir = serve_dir(settings)
    (state_dir / DEPLOYED_CONFIG).unlink(missing_ok=True)
    if not cluster.local_cluster_running(state_dir):
        cluster.stop_local_cluster(state_dir)  # forgets a dead cluster and its HAProxy state
        return "nothing was running"
    cluster.prepare_driver(state_dir)
    import ray
    from ray import serve

    note = ""
    try:
        cluster.connect(state_dir)
        serve.shutdown()
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # Serve that does not answer is stopped with its cluster below all the same.
        note = f" (Serve did not shut down cleanly: {exc})"
    ray.shutdown()
    cluster.stop_local_cluster(state_dir)
    return "Serve and the local Ray cluster stopped" + note
