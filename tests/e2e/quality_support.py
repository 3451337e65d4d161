"""Labelled traffic for the live-quality panels: the champion's predictions recorded as serving
records them, their true labels as outcomes, then a CT check whose `after_ct_check` hook
writes the `mlops.quality` documents. Shared by the dashboard e2e tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from elk.cli import after_ct_check
from ml import ct
from ml.common.tracking import configure_tracking
from ml.config import Settings
from ml.outcomes import OutcomeStore, PredictionRecord
from ml.predict import load_version

QUALITY_PANELS = (
    "mlops-serving-quality-rows",
    "mlops-serving-quality-hours",
    "mlops-serving-quality-labelled",
)


def serve_labelled(
    settings: Settings,
    version: str,
    rows: pd.DataFrame,
    truth: Sequence[Any],
    served_at: datetime,
) -> int:
    """Score `rows` with `version` and record them (served at `served_at`) with `truth` as
    their outcomes; how many were labelled."""
    configure_tracking(settings)
    model = load_version(settings.model_name, version)
    proba = model.predict_proba(rows)
    store = OutcomeStore(settings.ct_database)
    stamp = served_at.strftime("%Y%m%d%H%M%S%f")
    ids = [f"quality-{stamp}-{i}" for i in range(len(rows))]
    store.record_predictions(
        PredictionRecord(
            prediction_id,
            settings.model_name,
            version,
            features,
            model.classes[p_row.argmax()],
            dict(zip(map(str, model.classes), p_row)),
            served_at,
        )
        for prediction_id, features, p_row in zip(ids, rows.to_dict("records"), proba)
    )
    return sum(result.stored for result in store.record_feedback(list(zip(ids, truth))))


def emit_ct_check(settings: Settings) -> ct.CtReport:
    """What `mlops ct check` does after its check: the hook writes mlops.ct and mlops.quality."""
    configure_tracking(settings)
    report = ct.check(settings)
    after_ct_check(settings, report)
    return report
