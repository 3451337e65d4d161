"""`mlops monitor ...`: collectors, Elasticsearch/Kibana setup, NDJSON shipping, drift checks.

Added to `mlops` by its root (serving.main); the `after_train` and `after_promote`
hooks turn a finished training run or a manual promotion into training events.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ml.config import Settings

if TYPE_CHECKING:
    from elk.snapshot import ElasticsearchSnapshots
    from ml.backup import Manifest
    from elk.collectors import Collector
    from ml.ct import CtReport
    from ml.pipeline import PipelineResult

monitor_app = typer.Typer(
    help="Observability: host/container/Ray metrics, Elasticsearch + Kibana, drift alerts.",
    no_args_is_help=True,
)
backup_app = typer.Typer(
    help="Backups of every store (MLflow, artifacts, Optuna, CT database, Elasticsearch).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)
USAGE_ERROR = 2
UNAVAILABLE = 1
MONITOR_SERVICE = "mlops-monitor"


def register(app: typer.Typer) -> None:
    """Add `mlops monitor` and subscribe to pipeline stage events."""
    from elk.collectors.training import attach_stage_events

    app.add_typer(monitor_app, name="monitor")
    app.add_typer(backup_app, name="backup")
    attach_stage_events()


def after_train(settings: Settings, result: PipelineResult) -> None:
    """Stages, trials, the study and the promotion decision of the run that just finished."""
    from elk.collectors.training import attach_stage_events, pipeline_events
    from elk.sinks import build_emitter

    emitter = build_emitter(settings, "mlops-training")
    try:
        for event in pipeline_events(settings, result, attach_stage_events().drain()):
            emitter.emit(event)
    finally:
        emitter.close()


def after_promote(settings: Settings, version: str) -> None:
    """A manual promotion is a promotion decision too."""
    from elk import events
    from elk.sinks import build_emitter

    emitter = build_emitter(settings, "mlops-training")
    try:
        emitter.emit(
            events.promotion_event(
                model_name=settings.model_name,
                challenger_version=version,
                champion_version=None,
                promoted=True,
                metric="manual",
                challenger_score=None,
                champion_score=None,
                reason="manual promotion",
            )
        )
    finally:
        emitter.close()


def after_ct_check(settings: Settings, report: CtReport) -> None:
    """One `mlops.ct` event per trigger verdict of a continuous-training check (`mlops ct
    check`, `mlops ct run`), and one `mlops.quality` event per live-quality window."""
    from elk import events
    from elk.sinks import build_emitter

    version = report.champion.version if report.champion else None
    emitter = build_emitter(settings, "mlops-ct")
    try:
        for result in report.results:
            emitter.emit(
                events.ct_event(
                    model_name=settings.model_name,
                    model_version=version,
                    trigger=result.trigger,
                    fired=result.fired,
                    enough_evidence=result.enough_evidence,
                    reason=result.reason,
                    evidence=result.evidence,
                )
            )
        for event in quality_events(settings, report):
            emitter.emit(event)
    finally:
        emitter.close()


def quality_events(settings: Settings, report: CtReport) -> list[dict[str, Any]]:
    """The live-quality windows of a CT check beside the champion's holdout scores (none
    without a champion: nothing was served to measure)."""
    from dataclasses import asdict

    from elk import events

    champion = report.champion
    if champion is None:
        return []
    return [
        events.quality_event(
            model_name=settings.model_name,
            model_version=champion.version,
            window=asdict(window),
            metric=settings.promotion_metric,
            holdout=champion.holdout,
        )
        for window in report.quality
    ]


def _fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    from ml.common.cli import load_settings

    return load_settings(**overrides)


def _require_elasticsearch(settings: Settings) -> None:
    if not settings.elasticsearch_url:
        raise _fail("ELASTICSEARCH_URL is not set (elasticsearch_url)")


@monitor_app.command("run")
def run(
    interval: Annotated[float | None, typer.Option(help="seconds between samples")] = None,
    iterations: Annotated[int, typer.Option(min=0, help="samples to take; 0 = until stopped")] = 0,
    ray_metrics_url: Annotated[
        str | None, typer.Option(help="Ray's Prometheus endpoint, e.g. http://127.0.0.1:8080")
    ] = None,
) -> None:
    """Sample host, container and Ray Serve metrics into the configured sink until stopped."""
    from elk.collectors.containers import DockerCollector
    from elk.collectors.host import HostCollector
    from elk.collectors.ray_serve import RayServeCollector
    from elk.sinks import build_emitter

    from ml.common.cli import install_app_logs
    from ml.common.logs import log_to_console

    settings = _settings(monitor_interval_s=interval, ray_metrics_url=ray_metrics_url)
    log_to_console("%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the collector's own log file, beside the CLI's (`mlops.log.json`)
    install_app_logs(settings, MONITOR_SERVICE)
    collectors: list[Collector] = [HostCollector(settings.monitor_processes), DockerCollector()]
    if settings.ray_metrics_url:
        collectors.append(RayServeCollector(settings.ray_metrics_url))
    sink = "Elasticsearch" if settings.elasticsearch_url else str(settings.log_dir)
    console.print(
        f"monitor: {', '.join(c.name for c in collectors)} every "
        f"{settings.monitor_interval_s:g}s -> {sink}",
        highlight=False,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emitter = build_emitter(settings, "mlops-monitor")
    taken = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            for collector in collectors:
                for event in collector.collect():
                    emitter.emit(event)
            taken += 1
            if iterations and taken >= iterations:
                break
            stop.wait(max(0.0, settings.monitor_interval_s - (time.monotonic() - started)))
    finally:
        emitter.close()
    console.print(f"monitor: {taken} samples, {emitter.emitted} events, {emitter.dropped} dropped")


@monitor_app.command("setup")
def setup(
    kibana: Annotated[bool, typer.Option(help="also import the Kibana saved objects")] = True,
) -> None:
    """Install the Elasticsearch templates; import the Kibana dashboards when KIBANA_URL is set."""
    import httpx
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    from elk.sinks import build_client
    from elk.stack import KibanaImportError, import_saved_objects, install_templates

    settings = _settings()
    _require_elasticsearch(settings)
    try:
        report = install_templates(build_client(settings, request_timeout_s=30))
    except (TransportError, ApiError) as exc:
        raise _fail(f"Elasticsearch at {settings.elasticsearch_url}: {exc}", UNAVAILABLE) from exc
    for line in report.lines():
        console.print(line, highlight=False)
    if not kibana:
        return
    if not settings.kibana_url:
        console.print("Kibana: KIBANA_URL not set; dashboards not imported")
        return
    auth = None
    if settings.elasticsearch_username and settings.elasticsearch_password:
        auth = (settings.elasticsearch_username, settings.elasticsearch_password.get_secret_value())
    api_key = settings.elasticsearch_api_key
    try:
        count = import_saved_objects(
            settings.kibana_url, auth=auth, api_key=api_key.get_secret_value() if api_key else None
        )
    except (httpx.HTTPError, KibanaImportError) as exc:
        raise _fail(f"Kibana at {settings.kibana_url}: {exc}", UNAVAILABLE) from exc
    console.print(f"Kibana: {count} saved objects imported")


@monitor_app.command("ship")
def ship_files(
    log_dir: Annotated[
        Path | None, typer.Option(help="NDJSON directory (default: log_dir)")
    ] = None,
) -> None:
    """Bulk-ship the NDJSON telemetry files to Elasticsearch once, remembering offsets (for
    hosts without Filebeat; Filebeat is what tails them continuously)."""
    from elk.shipper import Shipper
    from elk.sinks import build_client

    settings = _settings()
    _require_elasticsearch(settings)
    directory = Path(log_dir or settings.log_dir or "")
    if not directory.is_dir():
        raise _fail(f"--log-dir: no such directory: {directory}")
    report = Shipper(build_client(settings, request_timeout_s=30), directory).ship_once()
    console.print(
        f"ship: {report.files} files, {report.delivered} delivered, "
        f"{report.duplicates} already there, {report.rejected} rejected, "
        f"{report.unparsable} unparsable lines"
    )
    if not report.complete:
        raise _fail("Elasticsearch became unreachable; run again to resume", UNAVAILABLE)


@monitor_app.command("drift")
def drift(
    version: Annotated[str | None, typer.Option(help="model version (default: champion)")] = None,
    input_path: Annotated[
        Path | None, typer.Option("--input", help="CSV/Parquet of inputs instead of recent ones")
    ] = None,
    window: Annotated[int | None, typer.Option(min=10, help="recent predictions to use")] = None,
    model_name: Annotated[str | None, typer.Option(help="registered model name")] = None,
    fail_on_drift: Annotated[bool, typer.Option(help="exit 1 when a feature drifted")] = False,
) -> None:
    """Compare recent inputs with the training profile; emit drift events; email on drift."""
    from elk.drift_check import DriftInputError, check_drift
    from ml.common.cli import user_errors
    from ml.drift import DriftError

    settings = _settings(model_name=model_name, drift_window=window)
    try:
        with user_errors():
            report = check_drift(settings, version=version, input_path=input_path)
    except (DriftInputError, DriftError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(
        "feature",
        "type",
        "PSI",
        "KS p",
        "drifted",
        title=f"Drift of {report.model_name} v{report.model_version} " f"({report.rows} rows)",
    )
    for item in sorted(report.drifts, key=lambda d: d.psi, reverse=True):
        table.add_row(
            item.feature,
            item.feature_type,
            f"{item.psi:.3f}",
            "-" if item.ks_pvalue is None else f"{item.ks_pvalue:.3g}",
            "[red]yes[/]" if item.drifted(report.threshold) else "",
        )
    console.print(table)
    if report.drifted:
        mailed = "alert emailed" if report.emailed else "no email sent (SMTP not configured?)"
        console.print(f"[red]{len(report.drifted)} feature(s) drifted[/]; {mailed}")
        if fail_on_drift:
            raise typer.Exit(1)
    else:
        console.print("[green]no drift[/] above PSI", report.threshold)


# --- backup and restore: ml.backup's files plus elk's Elasticsearch snapshot -------------------

BackupDirOpt = Annotated[
    Path | None, typer.Option("--backup-dir", help="where backups are kept (MLOPS_BACKUP_DIR)")
]


def _snapshots(settings: Settings, skip: bool) -> "ElasticsearchSnapshots | None":
    """The Elasticsearch part, or None when it is skipped or not configured."""
    from elk.snapshot import ElasticsearchSnapshots

    if skip or not settings.elasticsearch_url:
        return None
    return ElasticsearchSnapshots.from_settings(settings)


@backup_app.command("create")
def backup_create(
    backup_dir: BackupDirOpt = None,
    keep: Annotated[
        int | None, typer.Option("--keep", min=1, help="backups kept (MLOPS_BACKUP_KEEP)")
    ] = None,
    skip_elasticsearch: Annotated[
        bool, typer.Option(help="no Elasticsearch snapshot even if ELASTICSEARCH_URL is set")
    ] = False,
) -> None:
    """Back up the stores into a new directory with a sha256 manifest; prune beyond --keep."""
    from elasticsearch import ApiError, TransportError

    from ml import backup

    settings = _settings(backup_dir=backup_dir, backup_keep=keep)
    snapshots = _snapshots(settings, skip_elasticsearch)
    try:
        path, manifest = backup.create(settings, snapshots)
        pruned = backup.prune(settings)
        for old in pruned:
            if old.elasticsearch is not None and snapshots is not None:
                snapshots.delete(old.elasticsearch)
    except backup.BackupError as exc:
        raise _fail(str(exc)) from exc
    except (ApiError, TransportError) as exc:
        raise _fail(f"Elasticsearch at {settings.elasticsearch_url}: {exc}", UNAVAILABLE) from exc
    _print_backup(manifest, path, len(pruned))


def _print_backup(manifest: "Manifest", path: Path, pruned: int) -> None:
    from ml.backup import ARTIFACTS

    table = Table("part", "what", title=f"Backup {manifest.backup_id}")
    for database in manifest.databases:
        table.add_row(", ".join(database.roles), f"{database.kind}: {database.file}")
    artifacts = sum(1 for entry in manifest.files if entry.path.startswith(ARTIFACTS))
    table.add_row("artifacts", f"{artifacts} files from {manifest.artifact_root or '-'}")
    snapshot = manifest.elasticsearch
    table.add_row(
        "elasticsearch",
        f"{snapshot.snapshot}: {sum(snapshot.documents.values())} documents" if snapshot else "-",
    )
    console.print(table)
    console.print(f"backup written to {path}; pruned {pruned} older", highlight=False)


@backup_app.command("restore")
def backup_restore(
    backup_path: Annotated[Path, typer.Argument(help="the backup directory (<backup-dir>/<id>)")],
    force: Annotated[
        bool, typer.Option("--force", help="overwrite stores that are not empty")
    ] = False,
    skip_elasticsearch: Annotated[
        bool, typer.Option(help="restore the files only, not the Elasticsearch snapshot")
    ] = False,
) -> None:
    """Verify every file against the manifest, then restore the stores the settings name."""
    from elasticsearch import ApiError, TransportError

    from ml import backup

    settings = _settings()
    snapshots = _snapshots(settings, skip_elasticsearch)
    try:
        manifest = backup.read_manifest(backup_path)
        if manifest.elasticsearch is not None and snapshots is None and not skip_elasticsearch:
            raise backup.BackupError(
                "ELASTICSEARCH_URL: the backup holds an Elasticsearch snapshot; set it or pass "
                "--skip-elasticsearch"
            )
        manifest = backup.restore(settings, backup_path, force=force, snapshot=snapshots)
    except backup.BackupError as exc:
        raise _fail(str(exc)) from exc
    except (ApiError, TransportError) as exc:
        raise _fail(f"Elasticsearch at {settings.elasticsearch_url}: {exc}", UNAVAILABLE) from exc
    console.print(f"restored backup {manifest.backup_id} into {settings.var_dir}", highlight=False)


@backup_app.command("list")
def backup_list(backup_dir: BackupDirOpt = None) -> None:
    """The complete backups, oldest first."""
    from ml import backup

    settings = _settings(backup_dir=backup_dir)
    table = Table("id", "created", "profile", "files", "elasticsearch", title="Backups")
    for path in backup.complete_backups(backup.backup_root(settings)):
        try:
            manifest = backup.read_manifest(path)
        except backup.BackupError as exc:
            table.add_row(path.name, f"[red]{exc}[/]", "", "", "")
            continue
        snapshot = manifest.elasticsearch.snapshot if manifest.elasticsearch else "-"
        table.add_row(
            manifest.backup_id,
            manifest.created.isoformat(timespec="seconds"),
            manifest.profile,
            str(len(manifest.files)),
            snapshot,
        )
    console.print(table)
