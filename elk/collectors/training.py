"""Training telemetry: pipeline stages (from the `ml.stages` logger), Optuna trials and studies
(from the study's storage), promotion decisions (from the gate's decision).

`ml` never imports `elk`: stages are picked up by a logging handler, the rest is read after the
run from what `ml` returns and stores.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from elk import events
from ml.common.stages import STAGE_LOGGER
from ml.config import Settings
from ml.storage import study_storage


class StageEvents(logging.Handler):
    """Collects a stage event for every record on `ml.stages` that carries `mlops_stage`."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.collected: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, "mlops_stage", None)
        if stage is None:
            return
        self.collected.append(
            events.stage_event(
                stage=str(stage),
                status=str(getattr(record, "mlops_status", "unknown")),
                duration_s=getattr(record, "mlops_duration_s", None),
            )
        )

    def drain(self) -> list[dict[str, Any]]:
        taken, self.collected = self.collected, []
        return taken


def attach_stage_events() -> StageEvents:
    """Subscribe to `ml.stages` once per process (INFO records must reach the handler)."""
    logger = logging.getLogger(STAGE_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, StageEvents):
            return handler
    handler = StageEvents()
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def trial_events(settings: Settings, study_name: str) -> list[dict[str, Any]]:
    """One event per finished trial of the study, timestamped when the trial ended."""
    study = optuna.load_study(study_name=study_name, storage=study_storage(settings.optuna_storage))
    found = []
    for trial in study.get_trials(deepcopy=False):
        if not trial.state.is_finished():
            continue
        duration = trial.duration.total_seconds() if trial.duration else None
        event = events.trial_event(
            study_name=study_name,
            trial_number=trial.number,
            state=trial.state.name,
            value=trial.value,
            params=trial.params,
            duration_s=duration,
            metric=settings.tuning_metric,
            model_name=settings.model_name,
        )
        if trial.datetime_complete is not None:
            event["@timestamp"] = _iso(trial.datetime_complete)
        # Stable ids: re-reading the same study never doubles a trial in Elasticsearch.
        event["event"]["id"] = f"trial-{study_name}-{trial.number}"
        found.append(event)
    return found


def study_event_from(settings: Settings, tuning: Any, duration_s: float | None) -> dict:
    """The study summary from the pipeline's `TuningResult`."""
    return events.study_event(
        study_name=tuning.study_name,
        best_value=tuning.best_value,
        best_params=tuning.best_params,
        trials_complete=tuning.complete,
        trials_pruned=tuning.pruned,
        metric=settings.tuning_metric,
        model_name=settings.model_name,
        duration_s=duration_s,
    )


def promotion_event_from(model_name: str, decision: Any) -> dict[str, Any]:
    """The gate's decision (also stored as `gate.*` tags on the model version)."""
    return events.promotion_event(
        model_name=model_name,
        challenger_version=decision.challenger_version,
        champion_version=decision.champion_version,
        promoted=decision.promoted,
        metric=decision.metric,
        challenger_score=decision.challenger_score,
        champion_score=decision.champion_score,
        reason=decision.reason,
    )


def pipeline_events(settings: Settings, result: Any, stages: list[dict[str, Any]]) -> list[dict]:
    """Everything a finished `run_pipeline` has to tell: stages, trials, study, promotion."""
    collected = list(stages)
    if not stages:  # no handler was attached: rebuild the stage outcomes from the timings
        collected = [
            events.stage_event(stage=name, status="success", duration_s=seconds)
            for name, seconds in result.stage_seconds.items()
        ]
    collected += trial_events(settings, result.tuning.study_name)
    collected.append(study_event_from(settings, result.tuning, result.stage_seconds.get("tune")))
    collected.append(promotion_event_from(settings.model_name, result.decision))
    return collected


def _iso(moment: Any) -> str:
    """Optuna stores naive local datetimes; convert to UTC ISO-8601 with a `Z`."""
    from datetime import timezone

    aware = moment.astimezone(timezone.utc)
    return aware.isoformat(timespec="milliseconds").replace("+00:00", "Z")
