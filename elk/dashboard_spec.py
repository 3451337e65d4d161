"""The Kibana dashboards as data: data views, panels (Lens line/bar charts of our ECS fields)
and the dashboards that group them. `elk.dashboards` renders them into saved objects.

To add a panel: a `Panel` in the right `Dashboard` below, then `python -m elk.dashboards`.
"""

from __future__ import annotations

from dataclasses import dataclass

from elk.events import INDEX_PREFIX
from ml.common.logs import APP_DATASET
from ml.common.tasks import CLASSIFICATION, REGRESSION


@dataclass(frozen=True)
class DataView:
    id: str
    name: str
    datasets: tuple[str, ...]

    @property
    def title(self) -> str:
        """The index pattern: our data streams for these datasets."""
        return ",".join(INDEX_PREFIX + dataset for dataset in self.datasets)


@dataclass(frozen=True)
class Metric:
    """One y-axis value: `op` is a Lens operation (average, max, percentile, count, ...)."""

    op: str
    field: str | None = None
    label: str = ""
    percentile: int | None = None
    percent: bool = False
    task: str | None = None  # only models of this task write the field; None: any model


def task_metrics(task: str) -> list[Metric]:
    """The metrics only models of `task` fill (a classifier's stack leaves them empty)."""
    return [
        metric
        for board in DASHBOARDS
        for panel in board.panels
        for metric in panel.metrics
        if metric.task == task
    ]


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    data_view: DataView
    dataset: str
    metrics: tuple[Metric, ...]
    split: str | None = None
    x_terms: str | None = None  # a terms x-axis instead of the date histogram
    series: str = "line"
    width: int = 24
    where: str = ""  # more KQL `field : "value"` clauses, joined to the dataset's with `and`

    @property
    def kql(self) -> str:
        """The Lens query: the panel's dataset, narrowed by `where`."""
        dataset = f'event.dataset : "{self.dataset}"'
        return f"{dataset} and {self.where}" if self.where else dataset


@dataclass(frozen=True)
class Dashboard:
    id: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    time_from: str = "now-24h"


SYSTEM = DataView("mlops-system", "MLOps system", ("system.*", "docker.*"))
SERVING = DataView(
    "mlops-serving",
    "MLOps serving",
    ("mlops.prediction", "mlops.serve", "mlops.drift", "mlops.quality"),
)
TRAINING = DataView(
    "mlops-training",
    "MLOps training",
    ("mlops.trial", "mlops.study", "mlops.promotion", "mlops.stage"),
)
# The application logs (ml.common.logs; Ray Serve's replica logs mapped by filebeat.yml): for
# Discover, e.g. `log.level : "error" and mlops.model.version : "7"`.
LOGS = DataView("mlops-logs", "MLOps logs", (APP_DATASET,))
DATA_VIEWS = (SYSTEM, SERVING, TRAINING, LOGS)


def live_quality_panel(kind: str, title: str) -> Panel:
    """Live accuracy, F1 and ROC AUC of one window kind (`mlops.quality`), a regressor's RMSE
    and MAE, beside the holdout score the champion was promoted with. A window with too few
    labels has no scores: a gap (and a classifier's window has no RMSE, a regressor's no
    accuracy)."""
    return Panel(
        f"mlops-serving-quality-{kind}",
        title,
        SERVING,
        "mlops.quality",
        (
            Metric("average", "mlops.quality.accuracy", "Live accuracy", task=CLASSIFICATION),
            Metric("average", "mlops.quality.f1", "Live F1", task=CLASSIFICATION),
            Metric("average", "mlops.quality.roc_auc", "Live ROC AUC", task=CLASSIFICATION),
            Metric("average", "mlops.quality.rmse", "Live RMSE", task=REGRESSION),
            Metric("average", "mlops.quality.mae", "Live MAE", task=REGRESSION),
            Metric("average", "mlops.quality.holdout_score", "Champion holdout score"),
        ),
        where=f'mlops.quality.window.kind : "{kind}"',
    )


DASHBOARDS = (
    Dashboard(
        "mlops-dashboard-system",
        "MLOps · System",
        "CPU, memory, disk and network per host; our processes; container CPU and memory.",
        (
            Panel(
                "mlops-system-cpu",
                "CPU busy per host",
                SYSTEM,
                "system.cpu",
                (Metric("average", "system.cpu.total.norm.pct", "CPU busy", percent=True),),
                split="host.name",
            ),
            Panel(
                "mlops-system-memory",
                "Memory used per host",
                SYSTEM,
                "system.memory",
                (Metric("average", "system.memory.actual.used.pct", "Memory used", percent=True),),
                split="host.name",
            ),
            Panel(
                "mlops-system-load",
                "Load average (1 min) per host",
                SYSTEM,
                "system.load",
                (Metric("average", "system.load.1", "Load 1m"),),
                split="host.name",
            ),
            Panel(
                "mlops-system-disk",
                "Disk used per mount",
                SYSTEM,
                "system.filesystem",
                (Metric("max", "system.filesystem.used.pct", "Disk used", percent=True),),
                split="system.filesystem.mount_point",
            ),
            Panel(
                "mlops-system-network",
                "Network bytes/s per host",
                SYSTEM,
                "system.network",
                (
                    Metric("counter_rate", "system.network.in.bytes", "In bytes/s"),
                    Metric("counter_rate", "system.network.out.bytes", "Out bytes/s"),
                ),
                split="host.name",
            ),
            Panel(
                "mlops-system-process-cpu",
                "CPU of our processes by role",
                SYSTEM,
                "system.process",
                (Metric("sum", "system.process.cpu.total.norm.pct", "CPU", percent=True),),
                split="labels.role",
            ),
            Panel(
                "mlops-system-process-rss",
                "Memory (RSS) of our processes by role",
                SYSTEM,
                "system.process",
                (Metric("sum", "system.process.memory.rss.bytes", "RSS"),),
                split="labels.role",
            ),
            Panel(
                "mlops-system-container-cpu",
                "Container CPU",
                SYSTEM,
                "docker.container",
                (Metric("average", "docker.cpu.total.pct", "CPU", percent=True),),
                split="container.name",
            ),
            Panel(
                "mlops-system-container-memory",
                "Container memory",
                SYSTEM,
                "docker.container",
                (Metric("average", "docker.memory.usage.pct", "Memory", percent=True),),
                split="container.name",
            ),
        ),
    ),
    Dashboard(
        "mlops-dashboard-serving",
        "MLOps · Model serving",
        "Request rate, latency percentiles, errors, classes, model versions, drift, live "
        "quality beside the champion's holdout score.",
        (
            Panel(
                "mlops-serving-rate",
                "Predictions per interval by route",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.route",
                series="bar_stacked",
            ),
            Panel(
                "mlops-serving-latency",
                "Latency p50 / p95 / p99 (ms)",
                SERVING,
                "mlops.prediction",
                (
                    Metric("percentile", "mlops.prediction.latency_ms", "p50", percentile=50),
                    Metric("percentile", "mlops.prediction.latency_ms", "p95", percentile=95),
                    Metric("percentile", "mlops.prediction.latency_ms", "p99", percentile=99),
                ),
            ),
            Panel(
                "mlops-serving-errors",
                "Error rate (share of predictions by status)",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.status",
                series="bar_percentage_stacked",
            ),
            Panel(
                "mlops-serving-classes",
                "Class distribution",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.prediction.label",
                series="bar_percentage_stacked",
            ),
            Panel(
                "mlops-serving-versions",
                "Model version serving over time",
                SERVING,
                "mlops.prediction",
                (Metric("count", label="Predictions"),),
                split="mlops.model.version",
                series="bar_stacked",
            ),
            Panel(
                "mlops-serving-probability",
                "Mean predicted probability",
                SERVING,
                "mlops.prediction",
                (Metric("average", "mlops.prediction.probability", "Probability"),),
                split="mlops.model.version",
            ),
            Panel(
                "mlops-serving-ray-requests",
                "Ray Serve HTTP requests/s (Prometheus)",
                SERVING,
                "mlops.serve",
                (
                    Metric("counter_rate", "mlops.serve.http_requests_total", "Requests/s"),
                    Metric("counter_rate", "mlops.serve.http_errors_total", "Errors/s"),
                ),
            ),
            Panel(
                "mlops-serving-drift",
                "Drift per feature (PSI)",
                SERVING,
                "mlops.drift",
                (Metric("max", "mlops.drift.psi", "PSI"),),
                split="mlops.drift.feature",
                width=48,
            ),
            live_quality_panel("rows", "Live quality, newest labelled predictions, vs holdout"),
            live_quality_panel("hours", "Live quality, last hours, vs holdout"),
            Panel(
                "mlops-serving-quality-labelled",
                "Labelled predictions per live-quality window (scores need the minimum)",
                SERVING,
                "mlops.quality",
                (
                    Metric("max", "mlops.quality.labelled", "Labelled"),
                    Metric("max", "mlops.quality.min_labels", "Needed for scores"),
                ),
                split="mlops.quality.window.name",
                width=48,
            ),
        ),
    ),
    Dashboard(
        "mlops-dashboard-training",
        "MLOps · Training",
        "Trial scores over time, best score per study, promotion decisions, stages.",
        (
            Panel(
                "mlops-training-trials",
                "Trial scores over time",
                TRAINING,
                "mlops.trial",
                (Metric("max", "mlops.trial.value", "Score"),),
                split="mlops.study.name",
                series="line",
            ),
            Panel(
                "mlops-training-best",
                "Best score per study",
                TRAINING,
                "mlops.study",
                (Metric("max", "mlops.study.best_value", "Best score"),),
                x_terms="mlops.study.name",
                series="bar",
            ),
            Panel(
                "mlops-training-promotions",
                "Promotion decisions",
                TRAINING,
                "mlops.promotion",
                (Metric("count", label="Decisions"),),
                split="mlops.promotion.decision",
                series="bar_stacked",
            ),
            Panel(
                "mlops-training-trial-states",
                "Trials by state (pruned, complete, failed)",
                TRAINING,
                "mlops.trial",
                (Metric("count", label="Trials"),),
                split="mlops.trial.state",
                series="bar_stacked",
            ),
            Panel(
                "mlops-training-stages",
                "Stage duration (s)",
                TRAINING,
                "mlops.stage",
                (Metric("max", "mlops.stage.duration_s", "Duration"),),
                split="mlops.stage.name",
                series="bar_stacked",
                width=48,
            ),
        ),
    ),
)


# --- saved objects -----------------------------------------------------------------------------
