"""ECS documents, one builder per kind of telemetry.

Field names follow Metricbeat and ECS (`system.cpu.total.norm.pct`, `docker.memory.usage.pct`,
`@timestamp`, `event.dataset`, `service.name`, `host.name`, `labels.*`); model fields live under
`mlops.*`. Percentages are fractions (0-1). Every document carries `event.id`, a random id fixed
when the event is built, so a sink can replay it any number of times and Elasticsearch stores it
once (`create` with `_id = event.id`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from ml.common.values import plain

ECS_VERSION = "8.11.0"
INDEX_PREFIX = "mlops-"

# event.dataset values; the index (data stream) of a document is INDEX_PREFIX + dataset.
DATASET_CPU = "system.cpu"
DATASET_LOAD = "system.load"
DATASET_MEMORY = "system.memory"
DATASET_FILESYSTEM = "system.filesystem"
DATASET_NETWORK = "system.network"
DATASET_PROCESS = "system.process"
DATASET_CONTAINER = "docker.container"
DATASET_PREDICTION = "mlops.prediction"
DATASET_SERVE = "mlops.serve"
DATASET_TRIAL = "mlops.trial"
DATASET_STUDY = "mlops.study"
DATASET_PROMOTION = "mlops.promotion"
DATASET_STAGE = "mlops.stage"
DATASET_DRIFT = "mlops.drift"
DATASET_CT = "mlops.ct"
DATASET_FEEDBACK = "mlops.feedback"
DATASET_QUALITY = "mlops.quality"
DATASET_MODEL_LOAD = "mlops.model_load"
DATASET_SERVING_HEALTH = "mlops.serving_health"

ALL_DATASETS: tuple[str, ...] = (
    DATASET_CPU,
    DATASET_LOAD,
    DATASET_MEMORY,
    DATASET_FILESYSTEM,
    DATASET_NETWORK,
    DATASET_PROCESS,
    DATASET_CONTAINER,
    DATASET_PREDICTION,
    DATASET_SERVE,
    DATASET_TRIAL,
    DATASET_STUDY,
    DATASET_PROMOTION,
    DATASET_STAGE,
    DATASET_DRIFT,
    DATASET_CT,
    DATASET_FEEDBACK,
    DATASET_QUALITY,
    DATASET_MODEL_LOAD,
    DATASET_SERVING_HEALTH,
)


class _EventIds:
    """Unique event ids (32 hex digits, like a uuid4's) without a random draw each: every
    served row is an event, and uuid4 costs a system call. 64 random bits per process, then
    a counter; a forked child draws its own."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_EVENT_IDS = _EventIds()


def new_ids(count: int) -> list[str]:
    """`count` ids unique across processes and restarts (serving's prediction ids too)."""
    return [_EVENT_IDS.next() for _ in range(count)]


@lru_cache(maxsize=1)
def host_name() -> str:
    return socket.gethostname()


def utc_now_iso() -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, the form Elasticsearch's date type expects."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def index_for(dataset: str) -> str:
    """The data stream (or index) a dataset is written to: `mlops-<event.dataset>`."""
    return INDEX_PREFIX + dataset


def base_event(
    dataset: str,
    *,
    kind: str = "metric",
    service_name: str | None = None,
    labels: Mapping[str, str] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The ECS fields every document has; `service.name` may be filled in later by the emitter."""
    event: dict[str, Any] = {
        "@timestamp": timestamp or utc_now_iso(),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": _EVENT_IDS.next(),
            "dataset": dataset,
            "module": dataset.split(".", 1)[0],
            "kind": kind,
        },
        "host": {"name": host_name()},
    }
    if service_name:
        event["service"] = {"name": service_name}
    if labels:
        event["labels"] = {str(key): str(value) for key, value in labels.items()}
    return event


def event_id(event: Mapping[str, Any]) -> str:
    """The deterministic document id of an event (its `event.id`)."""
    return str(event["event"]["id"])


def dataset_of(event: Mapping[str, Any]) -> str:
    return str(event["event"]["dataset"])


# --- model serving -----------------------------------------------------------------------------


def prediction_event(
    *,
    model_name: str,
    model_version: str,
    prediction_id: str,
    label: Any,
    probability: float,
    latency_ms: float,
    route: str,
    status: str = "success",
    error: str | None = None,
    features: Mapping[str, Any] | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """One served prediction (one row). `label` is stored as a keyword string; the rows of
    one request share its `timestamp`.

    `features` (the row's inputs) are kept in `_source` only (not indexed) so `mlops monitor
    drift` can compare recent inputs with the training reference profile.
    """
    event = base_event(DATASET_PREDICTION, kind="event", timestamp=timestamp)
    event["event"]["outcome"] = "success" if status == "success" else "failure"
    event["event"]["duration"] = int(latency_ms * 1_000_000)  # ECS: nanoseconds
    event["mlops"] = {
        "model": {"name": model_name, "version": str(model_version)},
        "prediction": {
            "id": prediction_id,
            "label": None if label is None else str(label),
            "probability": float(probability),
            "latency_ms": float(latency_ms),
            "route": route,
            "status": status,
        },
    }
    if error:
        event["error"] = {"message": error}
    if features is not None:
        event["mlops"]["prediction"]["features"] = _plain_features(features)
    return event


def feedback_event(
    *, model_name: str, prediction_id: str, label: Any, stored: bool, error: str | None = None
) -> dict[str, Any]:
    """One reported outcome (`POST /feedback`): what really happened to a served prediction,
    and whether the store took it (an unknown id is a failure with its reason)."""
    event = base_event(DATASET_FEEDBACK, kind="event")
    event["event"]["outcome"] = "success" if stored else "failure"
    event["mlops"] = {
        "model": {"name": model_name},
        "feedback": {"prediction_id": prediction_id, "label": str(label), "stored": stored},
    }
    if error:
        event["error"] = {"message": error}
    return event


def _plain_features(features: Mapping[str, Any]) -> dict[str, Any]:
    """`plain` over a row, inlined for Python floats: it runs for every feature of every
    served row (a 10,000-row request is 300,000 values here)."""
    row = {}
    for key, value in features.items():
        if type(value) is float:  # noqa: E721 - exact type: numpy floats subclass float
            # False for NaN and +-infinity, as `plain` has it; comparisons only, as it is hot
            row[str(key)] = value if -math.inf < value < math.inf else None
        else:
            row[str(key)] = plain(value)
    return row


def serve_metrics_event(
    metrics: Mapping[str, float],
    *,
    deployment: str | None = None,
    application: str | None = None,
) -> dict[str, Any]:
    """Ray Serve's own Prometheus metrics, one document per scrape and deployment."""
    event = base_event(DATASET_SERVE)
    serve: dict[str, Any] = {key: float(value) for key, value in metrics.items()}
    if deployment:
        serve["deployment"] = deployment
    if application:
        serve["application"] = application
    event["mlops"] = {"serve": serve}
    return event


def model_load_event(
    *,
    model_name: str,
    model_version: str | None,
    status: str,
    duration_s: float,
    error: str | None = None,
) -> dict[str, Any]:
    """One attempt of a serving replica to load its model (`status` "success" or "failure");
    a failure carries the reason in `error.message` (the `model_load_failed` alert)."""
    if status not in ("success", "failure"):
        raise ValueError(f"model_load_event: status must be success or failure, not {status!r}")
    event = base_event(DATASET_MODEL_LOAD, kind="event")
    event["event"]["outcome"] = status
    event["event"]["duration"] = int(duration_s * 1_000_000_000)  # ECS: nanoseconds
    model: dict[str, Any] = {"name": model_name}
    if model_version is not None:
        model["version"] = str(model_version)
    event["mlops"] = {"model": model, "model_load": {"status": status, "duration_s": duration_s}}
    if error:
        event["error"] = {"message": error}
    return event


def serving_health_event(*, model_name: str, dropped_total: int, queued: int) -> dict[str, Any]:
    """A replica's periodic heartbeat: telemetry events dropped since it started (a counter)
    and waiting in its queue. Its absence is the `telemetry_silent` alert, a rising
    `dropped_total` the `telemetry_dropped` one."""
    event = base_event(DATASET_SERVING_HEALTH, kind="metric")
    event["mlops"] = {
        "model": {"name": model_name},
        "serving_health": {
            "telemetry": {"dropped_total": int(dropped_total), "queued": int(queued)}
        },
    }
    return event


# --- host ------------------------------------------------------------------------------------


def cpu_event(*, total_pct: float, user_pct: float, system_pct: float, cores: int) -> dict:
    """`*_pct` are fractions of the whole machine (0-1): Metricbeat's `norm.pct`."""
    event = base_event(DATASET_CPU)
    event["system"] = {
        "cpu": {
            "cores": cores,
            "total": {"norm": {"pct": total_pct}, "pct": total_pct * cores},
            "user": {"norm": {"pct": user_pct}},
            "system": {"norm": {"pct": system_pct}},
        }
    }
    return event


def load_event(*, load1: float, load5: float, load15: float, cores: int) -> dict[str, Any]:
    event = base_event(DATASET_LOAD)
    event["system"] = {
        "load": {
            "1": load1,
            "5": load5,
            "15": load15,
            "cores": cores,
            "norm": {"1": load1 / cores, "5": load5 / cores, "15": load15 / cores},
        }
    }
    return event


def memory_event(*, total: int, used: int, available: int, swap_used_pct: float) -> dict:
    event = base_event(DATASET_MEMORY)
    event["system"] = {
        "memory": {
            "total": total,
            "used": {"bytes": used, "pct": used / total if total else 0.0},
            "free": available,
            "actual": {
                "free": available,
                "used": {
                    "bytes": total - available,
                    "pct": (total - available) / total if total else 0.0,
                },
            },
            "swap": {"used": {"pct": swap_used_pct}},
        }
    }
    return event


def filesystem_event(
    *, mount_point: str, device: str, fs_type: str, total: int, used: int, free: int
) -> dict[str, Any]:
    event = base_event(DATASET_FILESYSTEM)
    event["system"] = {
        "filesystem": {
            "mount_point": mount_point,
            "device_name": device,
            "type": fs_type,
            "total": total,
            "used": {"bytes": used, "pct": used / total if total else 0.0},
            "free": free,
        }
    }
    return event


def network_event(
    *,
    interface: str,
    in_bytes: int,
    out_bytes: int,
    in_packets: int,
    out_packets: int,
    in_errors: int,
    out_errors: int,
) -> dict[str, Any]:
    """Counters are cumulative since boot, as in Metricbeat; dashboards take the derivative."""
    event = base_event(DATASET_NETWORK)
    event["system"] = {
        "network": {
            "name": interface,
            "in": {"bytes": in_bytes, "packets": in_packets, "errors": in_errors},
            "out": {"bytes": out_bytes, "packets": out_packets, "errors": out_errors},
        }
    }
    return event


def process_event(
    *,
    pid: int,
    name: str,
    role: str,
    cpu_pct: float,
    rss: int,
    memory_pct: float,
    cmdline: str = "",
) -> dict[str, Any]:
    """One of our processes (serving or training); `cpu_pct` is a fraction of the machine."""
    event = base_event(DATASET_PROCESS, labels={"role": role})
    event["process"] = {"pid": pid, "name": name, "command_line": cmdline[:1024]}
    event["system"] = {
        "process": {
            "cpu": {"total": {"norm": {"pct": cpu_pct}}},
            "memory": {"rss": {"bytes": rss, "pct": memory_pct}},
        }
    }
    return event


# --- containers --------------------------------------------------------------------------------


def container_event(
    *,
    container_id: str,
    name: str,
    image: str,
    cpu_pct: float,
    memory_usage: int,
    memory_limit: int,
) -> dict[str, Any]:
    """One container's stats (docker SDK); `cpu_pct` is a fraction of the machine."""
    event = base_event(DATASET_CONTAINER)
    event["container"] = {"id": container_id, "name": name, "image": {"name": image}}
    event["docker"] = {
        "cpu": {"total": {"pct": cpu_pct}},
        "memory": {
            "usage": {
                "total": memory_usage,
                "pct": memory_usage / memory_limit if memory_limit else 0.0,
            },
            "limit": memory_limit,
        },
    }
    return event


# --- training ----------------------------------------------------------------------------------


def trial_event(
    *,
    study_name: str,
    trial_number: int,
    state: str,
    value: float | None,
    params: Mapping[str, Any],
    duration_s: float | None,
    metric: str,
    model_name: str,
) -> dict[str, Any]:
    """One Optuna trial; params are flattened to strings (`mlops.trial.params.*`)."""
    event = base_event(DATASET_TRIAL, kind="event")
    trial: dict[str, Any] = {
        "number": trial_number,
        "state": state,
        "pruned": state == "PRUNED",
        "metric": metric,
        "params": {str(key): str(value) for key, value in params.items()},
    }
    if value is not None:
        trial["value"] = float(value)
    if duration_s is not None:
        trial["duration_s"] = float(duration_s)
    event["mlops"] = {"study": {"name": study_name}, "trial": trial, "model": {"name": model_name}}
    return event


def study_event(
    *,
    study_name: str,
    best_value: float | None,
    best_params: Mapping[str, Any],
    trials_complete: int,
    trials_pruned: int,
    metric: str,
    model_name: str,
    duration_s: float | None = None,
) -> dict[str, Any]:
    event = base_event(DATASET_STUDY, kind="event")
    study: dict[str, Any] = {
        "name": study_name,
        "metric": metric,
        "trials": {"complete": trials_complete, "pruned": trials_pruned},
        "best_params": {str(key): str(value) for key, value in best_params.items()},
    }
    if best_value is not None:
        study["best_value"] = float(best_value)
    if duration_s is not None:
        study["duration_s"] = float(duration_s)
    event["mlops"] = {"study": study, "model": {"name": model_name}}
    return event


def promotion_event(
    *,
    model_name: str,
    challenger_version: str,
    champion_version: str | None,
    promoted: bool,
    metric: str,
    challenger_score: float | None,
    champion_score: float | None,
    reason: str,
) -> dict[str, Any]:
    """A promotion-gate decision (the `gate.*` model-version tags)."""
    event = base_event(DATASET_PROMOTION, kind="event")
    event["event"]["outcome"] = "success" if promoted else "failure"
    promotion: dict[str, Any] = {
        "decision": "promoted" if promoted else "rejected",
        "promoted": promoted,
        "metric": metric,
        "challenger_version": str(challenger_version),
        "champion_version": None if champion_version is None else str(champion_version),
        "reason": reason,
    }
    if challenger_score is not None:
        promotion["challenger_score"] = float(challenger_score)
    if champion_score is not None:
        promotion["champion_score"] = float(champion_score)
    event["mlops"] = {"promotion": promotion, "model": {"name": model_name}}
    return event


def stage_event(*, stage: str, status: str, duration_s: float | None = None) -> dict[str, Any]:
    """A pipeline stage (data, tune, train, gate) starting or ending."""
    event = base_event(DATASET_STAGE, kind="event")
    stage_fields: dict[str, Any] = {"name": stage, "status": status}
    if duration_s is not None:
        stage_fields["duration_s"] = float(duration_s)
        event["event"]["duration"] = int(duration_s * 1_000_000_000)
    if status in ("success", "failure"):
        event["event"]["outcome"] = status
    event["mlops"] = {"stage": stage_fields}
    return event


# --- drift -------------------------------------------------------------------------------------


def drift_event(
    *,
    model_name: str,
    model_version: str,
    feature: str,
    feature_type: str,
    psi: float,
    ks_pvalue: float | None,
    window_start: str,
    window_end: str,
    window_size: int,
    threshold: float,
    drifted: bool | None = None,
) -> dict[str, Any]:
    """Drift of one feature: recent inputs against the training reference profile."""
    event = base_event(DATASET_DRIFT, kind="metric")
    drift: dict[str, Any] = {
        "feature": feature,
        "feature_type": feature_type,
        "psi": float(psi),
        "threshold": float(threshold),
        "drifted": bool(psi >= threshold) if drifted is None else drifted,
        "window": {"start": window_start, "end": window_end, "size": window_size},
        "reference": {"model_version": str(model_version)},
    }
    if ks_pvalue is not None:
        drift["ks_pvalue"] = float(ks_pvalue)
    event["mlops"] = {"drift": drift, "model": {"name": model_name, "version": str(model_version)}}
    return event


# --- continuous training ----------------------------------------------------------------------


def ct_event(
    *,
    model_name: str,
    model_version: str | None,
    trigger: str,
    fired: bool,
    enough_evidence: bool,
    reason: str,
    evidence: Mapping[str, Any],
) -> dict[str, Any]:
    """One trigger's verdict in a continuous-training check (`mlops ct check`). The evidence
    differs per trigger, so it is kept whole as JSON text; the scores panels chart are fields."""
    event = base_event(DATASET_CT, kind="event")
    event["event"]["outcome"] = "success" if fired else "unknown"
    ct: dict[str, Any] = {
        "trigger": trigger,
        "fired": fired,
        "enough_evidence": enough_evidence,
        "reason": reason,
        "evidence": json.dumps(evidence, sort_keys=True, default=str),
    }
    live = evidence.get("live")
    if isinstance(live, Mapping):
        ct["live"] = {key: float(value) for key, value in live.items()}
    if isinstance(evidence.get("holdout"), (int, float)):
        ct["holdout_score"] = float(evidence["holdout"])
    model: dict[str, Any] = {"name": model_name}
    if model_version is not None:
        model["version"] = str(model_version)
    event["mlops"] = {"ct": ct, "model": model}
    return event


LIVE_SCORES = ("accuracy", "f1", "roc_auc", "rmse", "mae")  # the last two: a regressor's


def quality_event(
    *,
    model_name: str,
    model_version: str,
    window: Mapping[str, Any],
    metric: str,
    holdout: Mapping[str, float],
) -> dict[str, Any]:
    """Live quality over one sliding window, beside the holdout scores the champion was
    registered with, so one panel can chart both. `window` is an `ml.ct.QualityWindow` as a
    mapping (name, kind, size, labelled, min_labels, scores). Below
    `min_labels` the document has the count and no scores: a gap, never an invented value."""
    event = base_event(DATASET_QUALITY, kind="metric")
    labelled, min_labels = int(window["labelled"]), int(window["min_labels"])
    quality: dict[str, Any] = {
        "window": {
            "name": str(window["name"]),
            "kind": str(window["kind"]),
            "size": float(window["size"]),
        },
        "labelled": labelled,
        "min_labels": min_labels,
        "enough_labels": labelled >= min_labels,
        "metric": metric,
        "holdout": {key: float(holdout[key]) for key in LIVE_SCORES if key in holdout},
    }
    if quality["enough_labels"]:
        scores = window["scores"]
        quality.update({key: float(scores[key]) for key in LIVE_SCORES if key in scores})
    if metric in holdout:
        quality["holdout_score"] = float(holdout[metric])
    event["mlops"] = {
        "quality": quality,
        "model": {"name": model_name, "version": str(model_version)},
    }
    return event
