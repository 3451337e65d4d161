"""Continuous training's triggers: each one a clear rule, evaluated with its evidence.

`check(settings)` asks four questions about the current champion:

- **new_data**: does the configured source's fingerprint differ from the one the champion was
  trained on (`data.fingerprint`, or `ct.source_fingerprint` when a retrain added feedback
  rows to the source)?
- **schedule**: is the champion older than `MLOPS_CT_MAX_AGE_H` hours?
- **drift**: on the most recent served inputs (at least `MLOPS_CT_MIN_DRIFT_ROWS`), does any
  feature's PSI reach `MLOPS_DRIFT_THRESHOLD_PSI`, confirmed by the KS test for numeric ones?
- **performance**: on at least `MLOPS_CT_MIN_LABELS` served predictions with a reported outcome,
  is the live promotion metric below the champion's holdout score by more than
  `MLOPS_CT_PERFORMANCE_MARGIN`?

A trigger without enough evidence (no champion, too few rows or labels) says so and does not
fire. Each result carries the numbers it decided on, for the `mlops.ct` event and the MLflow
tags of a retrain it causes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.config import LOWER_IS_BETTER, REGRESSION_METRICS, Settings
from ml.data import Dataset
from ml.drift import PROFILE_ARTIFACT
from ml.evaluation import is_better, prediction_metrics, regression_metrics
from ml.outcomes import LabelledRows, OutcomeStore
from ml.registry import champion_version

TRIGGERS = ("new_data", "schedule", "drift", "performance")
SOURCE_FINGERPRINT_TAG = "ct.source_fingerprint"


@dataclass(frozen=True)
class TriggerResult:
    """One trigger's verdict: fired or not, whether the evidence sufficed, and the evidence."""

    trigger: str
    fired: bool
    reason: str
    enough_evidence: bool = True
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Champion:
    """What the triggers compare against: the version holding the `champion` alias."""

    name: str
    version: str
    run_id: str
    created_at: datetime
    data_fingerprint: str | None
    holdout: dict[str, float]


@dataclass(frozen=True)
class QualityWindow:
    """Live quality over one sliding window of labelled predictions. `scores` (accuracy, F1,
    ROC AUC when the probabilities allow) are empty below `min_labels`: a count, no guess."""

    name: str
    kind: str  # "rows": the newest `size` labelled; "hours": served in the last `size` hours
    size: float
    labelled: int
    min_labels: int
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CtReport:
    """One check: the champion, each trigger's verdict, and live quality per window."""

    champion: Champion | None
    results: list[TriggerResult]
    quality: list[QualityWindow] = field(default_factory=list)

    @property
    def fired(self) -> list[TriggerResult]:
        return [result for result in self.results if result.fired]


def check(
    settings: Settings,
    client: MlflowClient | None = None,
    now: datetime | None = None,
    source: Dataset | None = None,
) -> CtReport:
    """Evaluate every trigger against the current champion (tracking must be configured);
    `source`, when the caller has loaded it already (a CT run trains on it), is not loaded
    again."""
    client = client or MlflowClient()
    champion = load_champion(client, settings.model_name)
    if champion is None:
        reason = f"no champion of {settings.model_name!r} yet: train one first"
        return CtReport(None, [TriggerResult(name, False, reason, False) for name in TRIGGERS])
    store = OutcomeStore(settings.ct_database)
    now = now or datetime.now(UTC)
    return CtReport(
        champion,
        [
            new_data(settings, champion, source),
            schedule(settings, champion, now),
            drift(settings, champion, client, store),
            performance(settings, champion, store),
        ],
        quality_windows(settings, champion, store, now),
    )


def load_champion(client: MlflowClient, name: str) -> Champion | None:
    version = champion_version(client, name)
    if version is None:
        return None
    return load_version_info(client, name, version)


def load_version_info(client: MlflowClient, name: str, version: str) -> Champion:
    """One registered version as the triggers see a champion (its holdout scores, data
    fingerprint); serving's `/overview` reads the version it serves this way."""
    found = client.get_model_version(name, version)
    tags = dict(found.tags or {})
    holdout = {
        key.removeprefix("holdout."): float(value)
        for key, value in tags.items()
        if key.startswith("holdout.")
    }
    return Champion(
        name=name,
        version=version,
        run_id=str(found.run_id),
        created_at=datetime.fromtimestamp(int(found.creation_timestamp) / 1000, UTC),
        data_fingerprint=tags.get(SOURCE_FINGERPRINT_TAG) or tags.get("data.fingerprint"),
        holdout=holdout,
    )


def new_data(
    settings: Settings, champion: Champion, dataset: Dataset | None = None
) -> TriggerResult:
    """The configured source, fingerprinted as training does, against the champion's data."""
    from ml.data import DataError
    from ml.pipeline import load_data

    try:
        dataset = dataset or load_data(settings)
    except DataError as exc:
        return TriggerResult("new_data", False, f"the source cannot be read: {exc}", False)
    current = dataset.report.fingerprint
    evidence = {
        "source": dataset.report.source,
        "source_fingerprint": current,
        "champion_fingerprint": champion.data_fingerprint,
        "rows": dataset.report.rows,
    }
    if champion.data_fingerprint is None:
        return TriggerResult(
            "new_data", False, "the champion has no data fingerprint", False, evidence
        )
    if current == champion.data_fingerprint:
        return TriggerResult(
            "new_data", False, "the source is what the champion saw", True, evidence
        )
    reason = f"the source changed ({current[:12]} vs {champion.data_fingerprint[:12]})"
    return TriggerResult("new_data", True, reason, True, evidence)


def schedule(settings: Settings, champion: Champion, now: datetime) -> TriggerResult:
    age_h = (now - champion.created_at).total_seconds() / 3600
    evidence = {"champion_age_h": round(age_h, 3), "max_age_h": settings.ct_max_age_h}
    if age_h > settings.ct_max_age_h:
        reason = f"the champion is {age_h:.1f} h old (limit {settings.ct_max_age_h:g} h)"
        return TriggerResult("schedule", True, reason, True, evidence)
    return TriggerResult("schedule", False, f"the champion is {age_h:.1f} h old", True, evidence)


def drift(
    settings: Settings, champion: Champion, client: MlflowClient, store: OutcomeStore
) -> TriggerResult:
    """Recent served inputs of the champion's model against its training profile."""
    from ml.drift import DriftError, compare

    recent = store.recent_inputs(settings.model_name, settings.drift_window)
    evidence: dict[str, Any] = {
        "rows": len(recent),
        "min_rows": settings.ct_min_drift_rows,
        "threshold_psi": settings.drift_threshold_psi,
    }
    if len(recent) < settings.ct_min_drift_rows:
        reason = f"{len(recent)} recent inputs, {settings.ct_min_drift_rows} needed"
        return TriggerResult("drift", False, reason, False, evidence)
    try:
        profile = _profile(client, champion)
        drifts = compare(profile, recent)
    except (MlflowException, OSError, DriftError) as exc:
        return TriggerResult("drift", False, f"no comparison: {exc}", False, evidence)
    drifted = [item for item in drifts if item.drifted(settings.drift_threshold_psi)]
    worst = max(drifts, key=lambda item: item.psi)
    evidence.update(
        drifted=[item.feature for item in drifted],
        worst_feature=worst.feature,
        worst_psi=round(worst.psi, 4),
        worst_ks_pvalue=worst.ks_pvalue,
    )
    if drifted:
        names = ", ".join(item.feature for item in drifted[:5])
        reason = f"{len(drifted)} of {len(drifts)} features drifted ({names})"
        return TriggerResult("drift", True, reason, True, evidence)
    return TriggerResult(
        "drift", False, f"no feature drifted (worst PSI {worst.psi:.3f})", True, evidence
    )


def _profile(client: MlflowClient, champion: Champion) -> dict[str, Any]:
    path = client.download_artifacts(champion.run_id, PROFILE_ARTIFACT)
    with open(path, encoding="utf-8") as profile_file:
        return dict(json.load(profile_file))


def performance(settings: Settings, champion: Champion, store: OutcomeStore) -> TriggerResult:
    """Live quality of the champion's own served predictions against its holdout score: the
    mistakes of the version it replaced must not count against it (a retrain would follow
    every retrain)."""
    metric = settings.promotion_metric
    rows = store.labelled(
        settings.model_name, performance_window(settings), version=champion.version
    )
    live = live_quality(rows, regression=metric in REGRESSION_METRICS)
    evidence: dict[str, Any] = {
        "metric": metric,
        "labelled": len(rows),
        "min_labels": settings.ct_min_labels,
        "live": live,
        "holdout": champion.holdout.get(metric),
        "margin": settings.ct_performance_margin,
    }
    if len(rows) < settings.ct_min_labels:
        reason = f"{len(rows)} labelled predictions, {settings.ct_min_labels} needed"
        return TriggerResult("performance", False, reason, False, evidence)
    holdout, now = champion.holdout.get(metric), live.get(metric)
    if holdout is None or now is None:
        reason = f"no {metric} to compare (holdout {holdout}, live {now})"
        return TriggerResult("performance", False, reason, False, evidence)
    # "Dropped" = the holdout score beats the live one by more than the margin; an error
    # (RMSE, MAE) is in the target's units, so its margin is that share of the holdout's.
    margin = settings.ct_performance_margin
    if metric in REGRESSION_METRICS and metric != "r2":
        margin *= abs(holdout)
    if is_better(metric, holdout, now, margin):
        worse = "is below" if metric not in LOWER_IS_BETTER else "is above"
        reason = (
            f"live {metric} {now:.4f} {worse} the holdout's {holdout:.4f} "
            f"by more than {margin:g}"
        )
        return TriggerResult("performance", True, reason, True, evidence)
    reason = f"live {metric} {now:.4f} holds against the holdout's {holdout:.4f}"
    return TriggerResult("performance", False, reason, True, evidence)


def performance_window(settings: Settings) -> int:
    """How many of the newest labelled predictions the performance trigger judges."""
    return settings.ct_min_labels * 5


def quality_windows(
    settings: Settings, champion: Champion, store: OutcomeStore, now: datetime
) -> list[QualityWindow]:
    """Live quality of the champion's own predictions over two sliding windows: the rows the
    performance trigger judges, so a
    chart shows what it decided on, and the last `ct_quality_window_h` hours, which moves with
    today's traffic even when that many rows span weeks."""
    rows, hours = performance_window(settings), settings.ct_quality_window_h
    since = now - timedelta(hours=hours)
    return [
        _window(settings, champion, f"last {rows} labelled", "rows", rows, store, None),
        _window(settings, champion, f"last {hours:g} h", "hours", hours, store, since),
    ]


def _window(
    settings: Settings,
    champion: Champion,
    name: str,
    kind: str,
    size: float,
    store: OutcomeStore,
    since: datetime | None,
) -> QualityWindow:
    limit = int(size) if since is None else settings.ct_max_feedback_rows
    rows = store.labelled(settings.model_name, limit, since, version=champion.version)
    enough = len(rows) >= settings.ct_min_labels
    regression = settings.promotion_metric in REGRESSION_METRICS
    live = live_quality(rows, regression=regression)
    scores = {key: value for key, value in live.items() if key != "labelled"}
    return QualityWindow(
        name=name,
        kind=kind,
        size=size,
        labelled=len(rows),
        min_labels=settings.ct_min_labels,
        scores=scores if enough else {},
    )


def live_quality(rows: LabelledRows, regression: bool = False) -> dict[str, float]:
    """Accuracy, F1 and (with probabilities, both classes seen) ROC AUC of labelled rows; a
    regressor's RMSE and MAE (its promotion metric is a regression one).

    Labels are compared by their text, in the model's class order where the probabilities
    give it (their keys are the model's classes, in order): F1's positive class is then the
    one the holdout's F1 used. Sorting the labels instead put 10 before 2."""
    if len(rows) == 0:
        return {}
    if regression:
        errors = regression_metrics(rows.truth, rows.predicted, only=("rmse", "mae"))
        return {**errors, "labelled": float(len(rows))}
    truth = [str(label) for label in rows.truth]
    predicted = [str(label) for label in rows.predicted]
    served = next((row for row in rows.probabilities if row), None)
    classes = list(served) if served else sorted({*truth, *predicted})
    if len(classes) < 2:
        return {"labelled": float(len(rows))}
    wanted: tuple[str, ...] = ("accuracy", "f1")
    proba = rows.probability_matrix(classes)
    if proba is not None and len(set(truth)) >= 2:
        wanted += ("roc_auc",)
    quality = prediction_metrics(truth, predicted, proba, classes, wanted)
    return {**quality, "labelled": float(len(rows))}
