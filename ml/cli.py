"""The training side of `mlops`: data, train, pipeline, promote, predict, evaluate, notify,
config.

The `mlops` command itself is `serving.main`, in the top layer: it adds the `elk` and
`serving` commands to this app and subscribes them to what these commands do (`subscribe`),
so `ml` never imports them, not even at run time."""

from __future__ import annotations

import json
import logging
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import optuna
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ml.common.cli import (
    console,
    err_console,
    fail,
    install_app_logs,
    load_settings,
    stops_on_sigterm,
    user_errors,
)
from ml.common.logs import log_to_console
from ml.common.stages import STAGE_LOGGER, STUDY_LOGGER
from ml.common.tasks import REGRESSION
from ml.common.tracking import configure_tracking
from ml.config import Settings

if TYPE_CHECKING:  # the commands import these when they run: keeps `mlops --help` fast
    from ml.ct import CtReport
    from ml.data import ValidationReport
    from ml.pipeline import PipelineResult
    from ml.tuning import TrialCallback

HookEvent = Literal["after_train", "after_promote", "after_ct_check"]

app = typer.Typer(
    help="Tabular data to a tuned, registered, served and monitored model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
ct_app = typer.Typer(
    help="Continuous training: evaluate the retrain triggers against the champion.",
    no_args_is_help=True,
)
app.add_typer(ct_app, name="ct")

DataOpt = Annotated[str | None, typer.Option("--data", help="CSV/Parquet path, SQL URL or 'demo'")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="target column")]
TaskOpt = Annotated[
    str | None,
    typer.Option("--task", help="classification or regression (default: inferred from the target)"),
]
TableOpt = Annotated[str | None, typer.Option("--table", help="table name for a SQL URL")]
ModelOpt = Annotated[str | None, typer.Option("--model-name", help="registered model name")]
TrialsOpt = Annotated[int | None, typer.Option("--trials", min=1, help="Optuna trials")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="tuning budget, seconds")]
JobsOpt = Annotated[int | None, typer.Option("--n-jobs", min=1, help="parallel trials")]


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _show_study_notes()


class _ConsoleNotes(logging.Handler):
    """Log records as console lines: which study a run joins and why (`ml.study`)."""

    def emit(self, record: logging.LogRecord) -> None:
        # One unbroken line each: a study name is something to copy.
        if record.levelno >= logging.WARNING:
            err_console.print(
                f"[yellow]warning:[/] {record.getMessage()}", highlight=False, soft_wrap=True
            )
        else:
            console.print(record.getMessage(), highlight=False, soft_wrap=True, markup=False)


def _show_study_notes() -> None:
    """Which study a run joins, and each stage as it starts and ends (`stage tune started`):
    where a long or interrupted run is, in a Jenkins log or a terminal."""
    for name in (STUDY_LOGGER, STAGE_LOGGER):
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _ConsoleNotes) for handler in logger.handlers):
            logger.addHandler(_ConsoleNotes())
            logger.setLevel(logging.INFO)


# --- commands ----------------------------------------------------------------------------

CLI_SERVICE = "mlops"


@app.callback()
def _application_logs() -> None:
    # Before every command: its log records (gate decisions, training results, failed loads)
    # also go to var/log/mlops.log.json as ECS JSON for Filebeat; the console is unchanged.
    # Settings the environment gets wrong are the command's to report (its options may fix
    # them): no log file then.
    try:
        settings = Settings()
    except (ValidationError, FileNotFoundError):
        return
    install_app_logs(settings, CLI_SERVICE)


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked, and which of them the profile chose."""
    settings = load_settings()
    table = Table(
        "setting", "value", "from", title=f"Effective settings (profile {settings.env}, MLOPS_ENV)"
    )
    for name, value in settings.masked().items():
        table.add_row(
            name, value, f"profile {settings.env}" if name in settings.from_profile else ""
        )
    console.print(table)


@app.command()
def data(
    data_source: DataOpt = None,
    target: TargetOpt = None,
    table: TableOpt = None,
    task: TaskOpt = None,
    report: Annotated[Path | None, typer.Option(help="where to write the JSON report")] = None,
) -> None:
    """Load and validate the data; print and save the validation report."""
    from ml.pipeline import load_data

    settings = load_settings(data=data_source, target=target, data_table=table, task=task)
    with user_errors():
        dataset = load_data(settings)
    _print_report(dataset.report)
    destination = report or settings.var_dir / "reports" / "validation_report.json"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(dataset.report.model_dump_json(indent=2))
    console.print(f"report written to {destination}")


def _training_command(show_report: bool) -> Callable[..., None]:
    """`train` and `pipeline` take the same options; `pipeline` also shows the data report."""

    def command(
        data_source: DataOpt = None,
        target: TargetOpt = None,
        table: TableOpt = None,
        task: TaskOpt = None,
        model_name: ModelOpt = None,
        trials: TrialsOpt = None,
        timeout: TimeoutOpt = None,
        n_jobs: JobsOpt = None,
    ) -> None:
        settings = load_settings(
            data=data_source,
            target=target,
            data_table=table,
            task=task,
            model_name=model_name,
            trials=trials,
            timeout_s=timeout,
            n_jobs=n_jobs,
        )
        with stops_on_sigterm("mlops pipeline" if show_report else "mlops train"):
            _train(settings, show_report=show_report)

    return command


app.command(
    "train", help="Tune, refit the best, register it as challenger, run the promotion gate."
)(_training_command(show_report=False))
app.command(
    "pipeline", help="Everything: validate the data, tune, register, gate; report the champion."
)(_training_command(show_report=True))


def _train(settings: Settings, show_report: bool = False) -> None:
    from ml.pipeline import load_data, run_pipeline, settings_for

    _quiet_libraries()
    with user_errors():
        dataset = load_data(settings)
        # the task's model name and metrics, for the summary too
        settings = settings_for(settings, dataset)
    if show_report:
        _print_report(dataset.report)
    with user_errors(), _trial_progress(settings) as callback:
        result = run_pipeline(settings, callbacks=[callback], dataset=dataset)
    _print_summary(result, settings)
    _run_hooks("after_train", settings, result)


@app.command()
def promote(
    version: Annotated[str, typer.Option("--version", help="model version to make champion")],
    model_name: ModelOpt = None,
    reason: Annotated[str, typer.Option(help="recorded on the version")] = "manual override",
) -> None:
    """Make VERSION the champion by hand (recorded as a manual decision)."""
    from mlflow.tracking import MlflowClient

    from ml.registry import promote as promote_version

    settings = load_settings(model_name=model_name)
    _quiet_libraries()
    with user_errors():
        configure_tracking(settings)
        promote_version(
            MlflowClient(),
            settings.model_name,
            version,
            reason,
            lock_database=settings.ct_database,
        )
    console.print(f"[green]{settings.model_name} version {version} is now champion[/]")
    _run_hooks("after_promote", settings, version)


@app.command()
def predict(
    input_path: Annotated[Path, typer.Option("--input", help="CSV or Parquet of feature rows")],
    output: Annotated[Path | None, typer.Option(help="write predictions CSV here")] = None,
    model_name: ModelOpt = None,
) -> None:
    """Score a file with the champion, in this process."""
    from ml.data import load_frame
    from ml.predict import load_champion

    settings = load_settings(model_name=model_name)
    _quiet_libraries()
    with user_errors():
        configure_tracking(settings)
        frame = load_frame(str(input_path))
        champion = load_champion(settings.model_name)
        frame, dropped = champion.without_target(frame, settings.target)
        for column in dropped:  # on stderr: stdout may be the predictions CSV
            err_console.print(
                f"column {column!r} dropped: it is the target, not a feature of "
                f"{champion.name} version {champion.version}",
                highlight=False,
            )
        predictions = champion.predict_frame(frame)
    if output:
        predictions.to_csv(output, index=False)
        console.print(
            f"{len(predictions)} predictions written to {output} "
            f"(model version {champion.version})"
        )
    else:
        sys.stdout.write(predictions.to_csv(index=False))


@app.command()
def evaluate(
    data_path: Annotated[
        Path, typer.Option("--data", help="labelled CSV or Parquet: feature columns + target")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="model version to score (default: champion)")
    ] = None,
    target: TargetOpt = None,
    model_name: ModelOpt = None,
) -> None:
    """Score a labelled file with the champion (or --version): metrics, confusion matrix, and
    the plots under var/reports/evaluate/."""
    from ml.labelled import evaluate_file
    from ml.predict import load_version, resolve_version

    settings = load_settings(model_name=model_name, target=target)
    _quiet_libraries()
    configure_tracking(settings)
    with user_errors():
        model = load_version(settings.model_name, version or resolve_version(settings.model_name))
        reports = settings.var_dir / "reports" / "evaluate" / f"{model.name}-v{model.version}"
        evaluation = evaluate_file(data_path, model, settings.target, reports)
    _print_evaluation(evaluation, model, settings)


@app.command()
def notify(
    status: Annotated[str, typer.Option(help="success or failure (also: unstable, aborted)")],
    title: Annotated[str, typer.Option(help="subject line / notification title")],
    body: Annotated[str, typer.Option(help="message text")] = "",
    channels: Annotated[
        str, typer.Option(help="comma-separated: email, desktop (Jenkins: desktop on failure)")
    ] = "email,desktop",
) -> None:
    """Email (SMTP_*) and desktop notification; exit 0 even when delivery fails."""
    from ml.notify import CHANNELS, STATUSES
    from ml.notify import notify as send_notifications

    if status.lower() not in STATUSES:
        fail(f"--status: expected one of {', '.join(STATUSES)}, got {status!r}")
    wanted = [channel.strip() for channel in channels.split(",") if channel.strip()]
    unknown = [channel for channel in wanted if channel not in CHANNELS]
    if unknown or not wanted:
        fail(f"--channels: expected some of {', '.join(CHANNELS)}, got {channels!r}")
    log_to_console("%(levelname)s %(name)s: %(message)s")
    delivered = send_notifications(load_settings(), status.lower(), title, body, wanted)
    console.print(
        ", ".join(f"{channel}: {'sent' if ok else 'not sent'}" for channel, ok in delivered.items())
    )


@ct_app.command("check")
def ct_check(
    model_name: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="the verdicts as JSON on stdout")] = False,
) -> None:
    """Evaluate new-data, schedule, drift and performance triggers; exit 0 whatever fired."""
    from ml import ct

    settings = load_settings(model_name=model_name)
    _quiet_libraries()
    with user_errors():
        configure_tracking(settings)
        report = ct.check(settings)
    _run_hooks("after_ct_check", settings, report)
    if as_json:
        sys.stdout.write(json.dumps(_ct_json(report), indent=2, default=str) + "\n")
        return
    champion = report.champion
    title = f"CT check: {settings.model_name}" + (
        f" version {champion.version}" if champion else " (no champion)"
    )
    table = Table("trigger", "fires", "evidence", "reason", title=title)
    for result in report.results:
        fires = "[bold red]yes[/]" if result.fired else "no"
        table.add_row(
            result.trigger,
            fires,
            "enough" if result.enough_evidence else "too little",
            result.reason,
        )
    console.print(table)


@ct_app.command("run")
def ct_run(
    model_name: ModelOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="retrain whatever the triggers say (cooldown too); the lock holds"
        ),
    ] = False,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            help="with --force: the id this run's result is kept under (POST /admin/retrain's)",
        ),
    ] = None,
) -> None:
    """Check the triggers and, when one fires, retrain on the source plus labelled feedback and
    run the gate. Exit 0 for "no trigger" and for "trained, gate decided"; errors exit non-zero."""
    from ml.notify import notify as send_notifications
    from ml.retrain import Request, retrain

    if request_id and not force:
        fail("--request-id: only with --force (it names a requested run)")
    settings = load_settings(model_name=model_name)
    _quiet_libraries()
    request = None
    if force:
        request = Request(request_id or f"cli-{uuid.uuid4().hex[:12]}", "mlops ct run --force")
    with stops_on_sigterm("mlops ct run"), user_errors(), _trial_progress(settings) as callback:
        configure_tracking(settings)
        outcome = retrain(settings, callbacks=[callback], request=request)
    if outcome.report is not None:
        _run_hooks("after_ct_check", settings, outcome.report)
    console.print(f"[bold]ct run:[/] {outcome.outcome}: {outcome.detail}", highlight=False)
    if outcome.result is None:
        return
    _print_summary(outcome.result, settings)
    _run_hooks("after_train", settings, outcome.result)
    title, body = _ct_message(settings, outcome.detail, outcome.report, outcome.result)
    send_notifications(settings, "success", title, body)


def _ct_message(
    settings: Settings, detail: str, report: CtReport | None, result: PipelineResult
) -> tuple[str, str]:
    """One notification per retrain: which trigger, its evidence, the decision, both scores."""
    decision = result.decision
    verdict = "promoted" if decision.promoted else "kept the champion"
    title = f"CT retrain of {settings.model_name}: {verdict}"
    lines = [detail, ""]
    for fired in report.fired if report is not None else []:
        lines.append(f"{fired.trigger}: {fired.reason}")
        lines.append(f"  evidence: {json.dumps(fired.evidence, default=str)[:1000]}")
    lines += [
        "",
        f"gate ({decision.metric}): challenger v{decision.challenger_version} "
        f"{decision.challenger_score}, champion v{decision.champion_version} "
        f"{decision.champion_score}",
    ]
    return title, "\n".join(lines)


def _ct_json(report: CtReport) -> dict[str, object]:
    champion = report.champion
    return {
        "champion": None if champion is None else {"version": champion.version},
        "fired": [result.trigger for result in report.fired],
        "results": [vars(result) for result in report.results],
    }


# --- output helpers ------------------------------------------------------------------------


def _print_evaluation(evaluation: Any, model: Any, settings: Settings) -> None:
    """The metrics beside the version's holdout scores, then the confusion matrix."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version(model.name, model.version).tags
    title = (
        f"{model.name} version {model.version} on {evaluation.source} "
        f"({evaluation.rows} labelled rows, target {evaluation.target!r})"
    )
    table = Table("metric", "this file", "holdout (at training)", title=title)
    for name, value in evaluation.metrics.items():
        shown = evaluation.notes.get(name, "n/a") if math.isnan(value) else f"{value:.4f}"
        holdout = tags.get(f"holdout.{name}")
        label = f"{name} (gate)" if name == settings.promotion_metric else name
        table.add_row(label, shown, f"{float(holdout):.4f}" if holdout else "-")
    console.print(table)
    names = [str(label) for label in evaluation.classes]
    if not names:  # a regressor: no classes to count
        for plot in evaluation.plots.values():
            console.print(f"plot written to {plot}", highlight=False)
        return
    matrix = Table("true / predicted", *names, title="Confusion matrix (rows: true class)")
    for name, counts in zip(names, evaluation.confusion.tolist()):
        matrix.add_row(name, *(str(count) for count in counts))
    console.print(matrix)
    for plot in evaluation.plots.values():
        console.print(f"plot written to {plot}", highlight=False)


def _print_report(report: ValidationReport) -> None:
    table = Table("check", "result", title=f"Data: {report.source}")
    table.add_row("rows x columns", f"{report.rows} x {report.columns}")
    table.add_row("target", report.target)
    table.add_row("task", f"{report.task} ({report.task_reason})")
    if report.task == REGRESSION:
        table.add_row("target values", json.dumps(report.target_summary))
    else:
        table.add_row("classes", _classes_shown(report.classes))
    kinds: dict[str, int] = {}
    for kind in report.feature_types.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    table.add_row("feature types", json.dumps(kinds))
    table.add_row("dropped columns", json.dumps(report.dropped_columns) or "-")
    table.add_row("columns with nulls", str(len(report.null_counts)))
    table.add_row("duplicate rows", str(report.duplicate_rows))
    table.add_row("fingerprint (sha256)", report.fingerprint)
    console.print(table)


def _classes_shown(classes: dict[str, int], limit: int = 10) -> str:
    """Rows per class, the `limit` largest: a table line, not a wall of labels."""
    shown = dict(list(classes.items())[:limit])
    more = len(classes) - len(shown)
    return json.dumps(shown) + (f" and {more} more classes" if more > 0 else "")


@contextmanager
def _trial_progress(settings: Settings) -> Iterator[TrialCallback]:
    """A rich progress bar plus one line per finished trial."""
    with Progress(
        TextColumn("[bold]tuning[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=settings.trials)

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            family = trial.params.get("family", "?")
            if trial.state == optuna.trial.TrialState.COMPLETE:
                outcome = f"{settings.tuning_metric}={trial.value:.4f}"
            else:
                outcome = trial.state.name.lower()
            try:
                best = f"best {study.best_value:.4f}"
            except ValueError:
                best = "no complete trial yet"
            progress.console.print(
                f"trial {trial.number:3d}  {family:<14} {outcome:<22} {best}", highlight=False
            )
            progress.update(task, advance=1, description=best)

        yield on_trial


def _print_summary(result: PipelineResult, settings: Settings) -> None:
    decision = result.decision
    table = Table("", "", title="Training summary", show_header=False)
    table.add_row(
        "study",
        Text(  # folded, not cut: the name is one to copy
            f"{result.tuning.study_name} ({result.tuning.complete} complete, "
            f"{result.tuning.pruned} pruned)",
            overflow="fold",
        ),
    )
    table.add_row("best params", json.dumps(result.tuning.best_params, default=str))
    table.add_row("registered", f"{settings.model_name} version {result.trained.version}")
    table.add_row(
        "gate",
        ("[green]promoted[/]" if decision.promoted else "[yellow]kept[/]") + f": {decision.reason}",
    )
    champion = decision.challenger_version if decision.promoted else decision.champion_version
    table.add_row("champion", f"{settings.model_name} version {champion}")
    for name, value in result.trained.holdout.items():
        table.add_row(f"holdout {name}", f"{value:.4f}")
    table.add_row("MLflow run", result.run_url)
    console.print(table)
    if settings.uses_local_tracking:
        console.print(
            f"Open the MLflow UI: [bold]mlflow ui --backend-store-uri "
            f"{settings.mlflow_tracking_uri} --port 5000[/] (or `make mlflow-ui`)",
            highlight=False,
        )


# --- listeners ---------------------------------------------------------------------------


class Listener(Protocol):
    """A layer above that reacts to these commands (elk records events, serving swaps the
    served model); it defines any of `after_train(settings, result)`,
    `after_promote(settings, version)` and `after_ct_check(settings, report)`."""


listeners: list[Listener] = []


def subscribe(listener: Listener) -> None:
    """Called by the `mlops` root (serving.main) for each layer above ml, in order."""
    listeners.append(listener)


def _run_hooks(
    event: HookEvent, settings: Settings, subject: PipelineResult | str | CtReport
) -> None:
    """Let the layers above react (e.g. serving redeploys after a promotion); never fatal."""
    for listener in listeners:
        hook = getattr(listener, event, None)
        if hook is not None:
            try:
                hook(settings, subject)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                name = getattr(listener, "__name__", type(listener).__name__)
                err_console.print(f"[yellow]warning:[/] {event} hook of {name}: {exc}")
