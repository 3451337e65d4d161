"""`mlops serve` / `mlops serve-stop`, and the `after_promote` hook that swaps the served model.

The commands call `serving.lifecycle` (start, update, stop); `mlops serve` returns with serving
left running, `mlops serve-stop` ends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ml.config import Settings
from serving.lifecycle import (
    DEPLOYED_CONFIG,
    base_url,
    serve_dir,
    start_serving,
    stop_serving,
    update_serving,
)

if TYPE_CHECKING:
    from ml.pipeline import PipelineResult

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


def after_train(settings: Settings, result: PipelineResult) -> None:
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
