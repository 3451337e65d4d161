"""`mlops monitor drift`: recent prediction inputs against the model version's reference profile.

Inputs come from a file the user names, or from the `features` of recent prediction events
(Elasticsearch when configured, else the NDJSON files). The result is one `mlops.drift` event
per feature and, when any feature drifted and SMTP is configured, one alert email.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from elk import events
from elk.sinks import build_client, build_emitter
from ml.config import Settings
from ml.drift import PROFILE_ARTIFACT, FeatureDrift, compare, summary


class DriftInputError(ValueError):
    """Something the user can fix: no profile for the version, no recent inputs, bad file."""


@dataclass(frozen=True)
class DriftReport:
    model_name: str
    model_version: str
    drifts: list[FeatureDrift]
    threshold: float
    window_start: str
    window_end: str
    rows: int
    emailed: bool = False

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [drift for drift in self.drifts if drift.drifted(self.threshold)]


def version_and_run(settings: Settings, version: str | None) -> tuple[str, str]:
    """(version, run id) of `version`, or of the champion when none is given: the run holds
    the version's reference profile."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ml.common.tracking import configure_tracking
    from ml.registry import CHAMPION

    configure_tracking(settings)
    client = MlflowClient()
    try:
        if version:
            found = client.get_model_version(settings.model_name, version)
        else:
            found = client.get_model_version_by_alias(settings.model_name, CHAMPION)
    except MlflowException as exc:
        wanted = f"version {version}" if version else "champion (alias 'champion')"
        raise DriftInputError(f"model {settings.model_name!r} has no {wanted}") from exc
    return str(found.version), str(found.run_id)


def load_profile(run_id: str, model_name: str, version: str) -> dict[str, Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        profile: dict[str, Any] = mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        raise DriftInputError(
            f"{model_name} version {version} has no {PROFILE_ARTIFACT} (trained before drift "
            "profiles were logged?): retrain it with `mlops train`"
        ) from exc
    return profile


def recent_inputs(settings: Settings, window: int) -> tuple[pd.DataFrame, str, str]:
    """The `features` of the last `window` predictions of the model, and their time range."""
    if settings.elasticsearch_url:
        sources = list(_from_elasticsearch(settings, window))
    else:
        sources = list(_from_ndjson(Path(settings.log_dir or ""), settings.model_name, window))
    rows = [source for source in sources if source[1]]
    if not rows:
        where = "Elasticsearch" if settings.elasticsearch_url else str(settings.log_dir)
        raise DriftInputError(
            f"no recent predictions with features for model {settings.model_name!r} in {where}; "
            "pass --input FILE"
        )
    stamps = sorted(stamp for stamp, _ in rows)
    return pd.DataFrame([features for _, features in rows]), stamps[0], stamps[-1]


def _from_elasticsearch(settings: Settings, window: int) -> Iterator[tuple[str, dict]]:
    client = build_client(settings)
    response = client.search(
        index=events.index_for(events.DATASET_PREDICTION),
        query={"term": {"mlops.model.name": settings.model_name}},
        sort=[{"@timestamp": "desc"}],
        size=window,
        source_includes=["@timestamp", "mlops.prediction.features"],
        ignore_unavailable=True,
    )
    for hit in response["hits"]["hits"]:
        source = hit["_source"]
        features = source.get("mlops", {}).get("prediction", {}).get("features") or {}
        yield source["@timestamp"], features


def _from_ndjson(log_dir: Path, model_name: str, window: int) -> Iterator[tuple[str, dict]]:
    """The newest `window` matching lines, reading rotated files oldest first."""
    current = log_dir / f"{events.index_for(events.DATASET_PREDICTION)}.ndjson"
    rotated = sorted(log_dir.glob(current.name + ".*"), key=lambda path: -int(path.suffix[1:]))
    newest: deque[tuple[str, dict]] = deque(maxlen=window)
    for path in [*rotated, current]:
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                mlops = event.get("mlops", {})
                if mlops.get("model", {}).get("name") != model_name:
                    continue
                features = mlops.get("prediction", {}).get("features")
                if features:
                    newest.append((event["@timestamp"], features))
    return iter(newest)


def read_input_file(path: Path) -> pd.DataFrame:
    from ml.data import load_frame

    if not path.is_file():
        raise DriftInputError(f"--input: no such file: {path}")
    frame: pd.DataFrame = load_frame(str(path))
    return frame


def check_drift(
    settings: Settings,
    version: str | None = None,
    input_path: Path | None = None,
    window: int | None = None,
    notify: bool = True,
) -> DriftReport:
    """Compare, emit one drift event per feature, email when a feature drifted."""
    model_version, run_id = version_and_run(settings, version)
    profile = load_profile(run_id, settings.model_name, model_version)
    if input_path is not None:
        frame = read_input_file(input_path)
        start = end = events.utc_now_iso()
    else:
        frame, start, end = recent_inputs(settings, window or settings.drift_window)
    drifts = compare(profile, frame)
    report = DriftReport(
        settings.model_name,
        model_version,
        drifts,
        settings.drift_threshold_psi,
        start,
        end,
        len(frame),
    )
    emit_drift_events(settings, report)
    if notify and report.drifted:
        report = DriftReport(**{**report.__dict__, "emailed": send_alert(settings, report)})
    return report


def emit_drift_events(settings: Settings, report: DriftReport) -> None:
    emitter = build_emitter(settings, "mlops-drift")
    try:
        for drift in report.drifts:
            emitter.emit(
                events.drift_event(
                    model_name=report.model_name,
                    model_version=report.model_version,
                    feature=drift.feature,
                    feature_type=drift.feature_type,
                    psi=drift.psi,
                    ks_pvalue=drift.ks_pvalue,
                    window_start=report.window_start,
                    window_end=report.window_end,
                    window_size=drift.rows,
                    threshold=report.threshold,
                    drifted=drift.drifted(report.threshold),
                )
            )
    finally:
        emitter.close()


def send_alert(settings: Settings, report: DriftReport) -> bool:
    """One email naming the drifted features; False when SMTP is not configured or failed."""
    from ml.notify import send_email

    names = ", ".join(drift.feature for drift in report.drifted[:5])
    subject = (
        f"[mlops] drift: {len(report.drifted)} feature(s) of {report.model_name} "
        f"v{report.model_version} ({names})"
    )
    body = (
        f"Recent inputs ({report.rows} rows, {report.window_start} .. {report.window_end}) "
        f"differ from the training data of {report.model_name} version {report.model_version}.\n"
        f"Threshold: PSI >= {report.threshold} (numeric features also need KS p < 0.01).\n\n"
        f"{summary(report.drifts, report.threshold)}\n\n"
        "Consider retraining: `make train` (or the training pipeline in Jenkins).\n"
    )
    return send_email(settings, subject, body)
