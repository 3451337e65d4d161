"""`mlops serve` / `mlops serve-stop`, and the `after_promote` hook that swaps the served model.

`mlops serve` resolves `champion` to a version number, renders `serving/serve_config.yaml` for it
into `var/serve/serve_config.yaml` (the deployed config, kept for `--update`), starts a detached
local Ray cluster if none runs (HAProxy mode, dashboard on 127.0.0.1) and deploys. The command
returns with serving left running; `mlops serve-stop` ends it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

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


# --- what `mlops` (serving.main) adds: commands and the after-promotion swap ---------------


def register(app: typer.Typer) -> None:
    """Add `serve` and `serve-stop` to the `mlops` CLI."""
    from ml.common.cli import console, fail, load_settings, user_errors

    @app.command("serve")
    def serve_command(
        update: Annotated[
            bool,
            typer.Option("--update", help="redeploy the running app with " "the current champion"),
        ] = False,
        version: Annotated[
            str | None,
            typer.Option("--version", help="serve this version " "instead of the champion"),
        ] = None,
        port: Annotated[int | None, typer.Option("--port", min=1, max=65535)] = None,
        replicas: Annotated[int | None, typer.Option("--replicas", min=1)] = None,
        model_name: Annotated[str | None, typer.Option("--model-name")] = None,
    ) -> None:
        """Serve the champion with Ray Serve (detached); --update swaps in a new champion."""
        from serving.deploy import ServeError
        from serving.local_cluster import ClusterError

        settings = load_settings(model_name=model_name, serve_port=port)
        _quiet()
        try:
            with user_errors():
                if update:
                    serving = update_serving(settings, version)
                else:
                    serving = start_serving(settings, version=version, num_replicas=replicas)
        except (ServeError, ClusterError) as exc:
            fail(str(exc))
        console.print(f"[green]serving {serving.model_uri}[/]")
        for name, url in serving.urls().items():
            console.print(f"  {name:<14} {url}", highlight=False)

    @app.command("serve-stop")
    def serve_stop_command() -> None:
        """Stop serving (and the local Ray cluster `mlops serve` started)."""
        _quiet()
        console.print(stop_serving(load_settings()))


def after_train(settings: Settings, result: Any) -> None:
    """After training: when the gate promoted a new champion, swap it in if serving is up."""
    decision = result.decision
    if decision.promoted:
        after_promote(settings, decision.challenger_version)


def after_promote(settings: Settings, version: str) -> None:
    """After `mlops promote`: swap the served model if serving is up for this model."""
    from ml.common.cli import console
    from serving import deploy

    deployed_path = serve_dir(settings) / DEPLOYED_CONFIG
    if not deployed_path.is_file():
        return
    port = deploy.read_config(deployed_path)["http_options"]["port"]
    current = deploy.serving_version(base_url(settings, port))
    if current is None or current.get("model_name") != settings.model_name:
        return
    _quiet()
    serving = update_serving(settings, version)
    console.print(f"[green]serving swapped to {serving.model_uri}[/]")


def _quiet() -> None:
    import logging

    for name in ("ray", "ray.serve", "mlflow", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
