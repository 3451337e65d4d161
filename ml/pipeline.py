"""The training chain end to end: data -> tuning -> refit/register -> promotion gate.

Each stage is timed and announced on the `ml.stages` logger (stage, status, duration), so
telemetry can subscribe with a logging handler without `ml` importing it.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from matplotlib import pyplot as plt
from mlflow.data.pandas_dataset import from_pandas
from mlflow.tracking import MlflowClient

from ml.common.signals import Terminated
from ml.baselines import Choice, keep_tuned_or_baseline
from ml.common.stages import STAGE_LOGGER
from ml.common.tracking import configure_tracking, store_setup_lock
from ml.config import Settings
from ml.data import DataError, Dataset, Split, ValidationReport, load_dataset, split
from ml.decision import Classifier, split_threshold
from ml.evaluation import holdout_metrics
from ml.registry import GateDecision, run_gate
from ml.study import open_study, plan_study
from ml.training import TrainedModel, fit_best, log_and_register
from ml.tracking import TrialTracker
from ml.tuning import TrialCallback, TuningResult, study_figures, tune

stage_log = logging.getLogger(STAGE_LOGGER)
log = logging.getLogger(__name__)


@dataclass
class PipelineResult:  # pylint: disable=too-many-instance-attributes
    """Everything a pipeline run produced, for the CLI summary and the plugins' hooks."""

    report: ValidationReport
    tuning: TuningResult
    trained: TrainedModel
    decision: GateDecision
    run_id: str
    experiment_id: str
    tracking_uri: str
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def run_url(self) -> str:
        """A link into the MLflow UI when tracking is a server, else the run id."""
        if self.tracking_uri.startswith("http"):
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"run {self.run_id} (experiment {self.experiment_id})"


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time a stage and announce its start and outcome."""
    started = time.perf_counter()
    stage_log.info("stage %s started", name, extra={"mlops_stage": name, "mlops_status": "started"})
    status = "failure"
    try:
        yield
        status = "success"
    except Terminated as exc:
        exc.stage = exc.stage or name  # the innermost stage: what the report names
        status = "terminated"
        raise
    finally:
        timings[name] = time.perf_counter() - started
        stage_log.info(
            "stage %s %s in %.1fs",
            name,
            status,
            timings[name],
            extra={"mlops_stage": name, "mlops_status": status, "mlops_duration_s": timings[name]},
        )


def load_data(settings: Settings) -> Dataset:
    """The configured dataset, validated."""
    return load_dataset(
        settings.data,
        settings.target,
        table=settings.data_table,
        cv_folds=settings.cv_folds,
        test_size=settings.test_size,
        task=settings.task,
        max_classes=settings.max_classes,
    )


def settings_for(settings: Settings, dataset: Dataset) -> Settings:
    """The settings for this dataset's task: its default model name, metrics and families
    where none was set (ml/config.py `TASK_DEFAULTS`); DataError names a setting of the other
    task, or MAPE on a target that reaches 0."""
    where = f"{dataset.report.source}: target column {dataset.target!r} ({dataset.task})"
    try:
        fitted = settings.for_task(dataset.task)  # type: ignore[arg-type]
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc
    metrics = {fitted.tuning_metric, fitted.promotion_metric}
    if "mape" in metrics and bool((dataset.y == 0).any()):
        raise DataError(f"{where} is 0 on some rows, where MAPE is undefined: use rmse or mae")
    return fitted


def log_dataset(dataset: Dataset, settings: Settings) -> None:
    """Dataset input, validation report and fingerprint on the active run."""
    report = dataset.report
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways"
        warnings.simplefilter("ignore", UserWarning)
        source = from_pandas(
            dataset.frame,
            source=report.source,
            targets=dataset.target,
            name=Path(report.source).stem or "dataset",
            digest=report.fingerprint[:32],
        )
    mlflow.log_input(source, context="training")
    mlflow.log_dict(json.loads(report.model_dump_json()), "validation_report.json")
    mlflow.set_tags(
        {
            "data.fingerprint": report.fingerprint,
            "data.source": report.source,
            "data.rows": str(report.rows),
            "task": report.task,
            "mlops.kind": "study",
        }
    )
    mlflow.log_params(
        {
            "data": settings.data,
            "target": dataset.target,
            "task": dataset.task,
            "trials": settings.trials,
            "cv_folds": settings.cv_folds,
            "families": ",".join(settings.families),
            "tuning_metric": settings.tuning_metric,
            "seed": settings.seed,
        }
    )


def log_decision(settings: Settings, model: Classifier) -> None:
    """How the registered model decides: the decision metric, and the threshold chosen for it
    on the best trial's out-of-fold rows (none: the most probable class)."""
    mlflow.log_param("decision_metric", settings.decision or "none")
    threshold = split_threshold(model)[1]
    if threshold is not None:
        mlflow.log_param("decision_threshold", f"{threshold:.6f}")
        mlflow.log_metric("decision_threshold", threshold)


def log_choice(choice: Choice, metric: str) -> None:
    """Which model is registered (`chosen_model`: tuned, or the untuned baseline that beat it
    on the holdout) and every candidate's holdout score (`candidate_holdout_<metric>_*`)."""
    mlflow.set_tag("chosen_model", choice.kept)
    mlflow.log_metrics(
        {f"candidate_holdout_{metric}_{name}": value for name, value in choice.scores.items()}
    )
    if choice.kept != "tuned":
        log.warning(
            "an %s model beats the tuned one on the holdout (%s): registering it instead",
            choice.kept,
            ", ".join(f"{name} {value:.4f}" for name, value in choice.scores.items()),
        )


def log_holdout_at_half(model: Classifier, holdout: Split) -> None:
    """With a tuned threshold, the holdout's threshold metrics at 0.5 too (`holdout_*_at_0.5`),
    so a run shows what the threshold changed."""
    pipeline, threshold = split_threshold(model)
    if threshold is None:
        return
    at_half = holdout_metrics(
        pipeline,
        holdout.X_holdout,
        holdout.y_holdout,
        only=("accuracy", "precision", "recall", "f1"),
    )
    mlflow.log_metrics({f"holdout_{name}_at_0.5": value for name, value in at_half.items()})


def run_pipeline(  # pylint: disable=too-many-locals
    settings: Settings, callbacks: list[TrialCallback] | None = None, dataset: Dataset | None = None
) -> PipelineResult:
    """Everything `mlops pipeline` does; raises DataError before anything is logged."""
    timings: dict[str, float] = {}
    with stage("data", timings):
        dataset = dataset or load_data(settings)
        settings = settings_for(settings, dataset)
        holdout_split: Split = split(dataset, settings.test_size, settings.seed)
    with store_setup_lock(settings):  # two pipelines may start together on new stores
        experiment_id = configure_tracking(settings)
        # One study per objective: a run resumes only a study it can continue (ml/study.py).
        plan = plan_study(settings, dataset.report.fingerprint, dataset.task)
        open_study(settings, plan)
    client = MlflowClient()
    study_name = plan.name
    with mlflow.start_run(run_name=f"study-{study_name}") as parent:
        log_dataset(dataset, settings)
        with stage("tune", timings):
            tracker = TrialTracker(
                client, experiment_id, parent.info.run_id, settings.tuning_metric
            )
            tuning = tune(
                holdout_split, dataset.feature_types, settings, study_name, tracker, callbacks
            )
        mlflow.log_params({f"best_{key}": value for key, value in tuning.best_params.items()})
        mlflow.log_metrics(
            {
                f"best_cv_{settings.tuning_metric}": tuning.best_value,
                "trials_complete": tuning.complete,
                "trials_pruned": tuning.pruned,
            }
        )
        for file_name, figure in study_figures(study_name, settings).items():
            mlflow.log_figure(figure, f"plots/{file_name}")
            plt.close(figure)
        with stage("train", timings):
            model = fit_best(
                tuning.best_params, dataset, holdout_split, settings.seed, tuning.threshold
            )
            choice = keep_tuned_or_baseline(
                model,
                tuning.best_params,
                list(settings.families),
                dataset,
                holdout_split,
                settings.promotion_metric,
                settings.promotion_margin,
                settings.seed,
            )
            log_choice(choice, settings.promotion_metric)
            log_decision(settings, choice.model)
            trained = log_and_register(
                choice.model, choice.params, dataset, holdout_split, settings
            )
            log_holdout_at_half(choice.model, holdout_split)
        with stage("gate", timings):
            decision = run_gate(
                client,
                settings.model_name,
                trained.version,
                holdout_split,
                settings.promotion_metric,
                settings.promotion_margin,
                lock_database=settings.ct_database,
            )
        mlflow.set_tags(
            {
                "gate.decision": "promoted" if decision.promoted else "rejected",
                "model.version": trained.version,
            }
        )
        mlflow.log_metrics({f"stage_{name}_s": seconds for name, seconds in timings.items()})
    result = PipelineResult(
        dataset.report,
        tuning,
        trained,
        decision,
        parent.info.run_id,
        experiment_id,
        str(settings.mlflow_tracking_uri),
        timings,
    )
    log.info(
        "training run finished: %s version %s registered, %s",
        settings.model_name,
        trained.version,
        "promoted" if decision.promoted else "champion kept",
        extra=result_fields(settings, result),
    )
    return result


def result_fields(settings: Settings, result: PipelineResult) -> dict[str, object]:
    """A training run's result as the ECS/`mlops.*` fields of its log record."""
    fields: dict[str, object] = {
        "event.action": "training-run",
        "event.outcome": "success",
        "event.duration": int(sum(result.stage_seconds.values()) * 1_000_000_000),
        "mlops.model.name": settings.model_name,
        "mlops.model.version": result.trained.version,
        "mlops.study.name": result.tuning.study_name,
        "mlops.study.metric": settings.tuning_metric,
        "mlops.study.best_value": result.tuning.best_value,
        "mlops.study.trials.complete": result.tuning.complete,
        "mlops.study.trials.pruned": result.tuning.pruned,
        "mlops.promotion.decision": "promoted" if result.decision.promoted else "rejected",
        "mlops.training.run_id": result.run_id,
    }
    for metric, value in result.trained.holdout.items():
        fields[f"mlops.training.holdout.{metric}"] = float(value)
    return fields
