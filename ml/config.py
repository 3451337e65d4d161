"""One typed settings object for the whole chain.

Values come from, in order of precedence: keyword arguments, environment variables
(`MLOPS_*`, plus the conventional un-prefixed `MLFLOW_TRACKING_URI`, `ELASTICSEARCH_URL`,
`SMTP_*`), then an optional YAML file named by `MLOPS_CONFIG`, then the embedded defaults.
Nothing else in the project reads `os.environ`.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ml.common.tasks import CLASSIFICATION, REGRESSION, Task, TaskChoice
from ml.families import (
    all_families,
    FAMILIES,
    UnknownFamilyError,
    families_for,
)

Metric = Literal[
    "roc_auc", "accuracy", "f1", "precision", "recall", "log_loss", "rmse", "mae", "r2", "mape"
]
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
# Errors are better when lower; so is log loss.
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "rmse", "mae", "mape"})
# What a task tunes and gates on, and registers as, when the setting is not given.
TASK_DEFAULTS: dict[str, dict[str, str]] = {
    CLASSIFICATION: {
        "tuning_metric": "roc_auc",
        "promotion_metric": "roc_auc",
        "model_name": "mlops-classifier",
    },
    REGRESSION: {
        "tuning_metric": "rmse",
        "promotion_metric": "rmse",
        "model_name": "mlops-regressor",
    },
}
# Metrics a binary decision threshold is chosen for (ml/decision.py). Not precision or recall
# alone: maximised over the threshold they are degenerate (flag one row / flag every row).
THRESHOLD_METRICS = ("f1", "accuracy")
Profile = Literal["dev", "prod"]

# What `MLOPS_ENV` changes: each profile's values replace the embedded defaults, and anything
# set explicitly (argument, environment, YAML) still wins. dev is the embedded defaults.
# docs/operations.md lists the same table (a unit test keeps the two in step).
PROFILES: dict[str, dict[str, object]] = {
    "dev": {},
    "prod": {
        # a real search, not a smoke test
        "trials": 50,
        "timeout_s": 1800.0,
        "cv_folds": 5,
        # a challenger must beat the champion by a margin, not by noise
        "promotion_margin": 0.002,
        # no desktop in a cluster: notifications go by email
        "desktop_notifications": False,
        # retrain at most every 6 h, however often the triggers fire
        "ct_cooldown_s": 21600.0,
        # two weeks of nightly backups
        "backup_keep": 14,
    },
}


def _classification_families() -> list[str]:
    return list(FAMILIES)


def _env(*names: str) -> AliasChoices:
    """Accept both the prefixed name and conventional un-prefixed ones."""
    return AliasChoices(*names)


# The settings derived from others when not given (their unset value), and what they follow.
DERIVED: dict[str, str | None] = {
    "mlflow_tracking_uri": "",
    "optuna_storage": "",
    "log_dir": None,
    "ct_database": "",
    "backup_dir": None,
}
DERIVED_FROM = {"var_dir", "mlflow_tracking_uri"}


class Settings(BaseSettings):
    """Every knob of the chain; see `mlops config show` for the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="MLOPS_", extra="ignore", populate_by_name=True, validate_default=True
    )

    # --- profile and where state lives -------------------------------------------------
    env: Profile = Field("dev", description="settings profile (MLOPS_ENV): dev or prod")
    var_dir: Path = Path("var")

    # --- data --------------------------------------------------------------------------
    data: str = Field("demo", description="CSV/Parquet path, SQLAlchemy URL, or 'demo'")
    data_table: str | None = Field(None, description="table name when `data` is a SQL URL")
    target: str | None = Field(None, description="target column ('target' for the demo)")
    task: TaskChoice = Field(
        "auto",
        description="auto: classification for text/boolean targets and integer targets with at "
        "most max_classes values, regression for other numbers (ml/data.py infer_task)",
    )
    max_classes: int = Field(
        20, ge=2, description="an integer target with more distinct values is a regression"
    )
    test_size: float = Field(0.2, gt=0.0, lt=0.9)
    seed: int = 42

    # --- tracking and registry ---------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        "", validation_alias=_env("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI")
    )
    experiment_name: str = "mlops-chain"
    model_name: str = Field(
        "mlops-classifier", description="default: mlops-classifier, or mlops-regressor (task)"
    )

    # --- tuning ------------------------------------------------------------------------
    families: Annotated[list[str], NoDecode] = Field(
        default_factory=_classification_families,
        description="model families to search (ml/families.py); default: the task's",
    )
    trials: int = Field(20, ge=1)
    timeout_s: float | None = Field(600.0, gt=0)
    n_jobs: int = Field(1, ge=1)
    cv_folds: int = Field(3, ge=2, le=10)
    tuning_metric: Metric = Field("roc_auc", description="default per task: roc_auc, or rmse")
    decision_metric: Literal["auto", "f1", "accuracy", "none"] = Field(
        "auto",
        description="binary models: the metric their decision threshold is tuned for "
        "(ml/decision.py); auto: the tuning metric when it is f1 or accuracy, else none (0.5)",
    )
    optuna_storage: str = Field(
        "",
        description="an RDB URL (machines share it) or a journal file path (one host); "
        "default: a SQLite file beside a SQLite tracking file, else var/optuna.db (ml/storage.py)",
    )
    study_name: str | None = Field(
        None, description="default: one study per objective (ml/study.py), so changes restart"
    )

    # --- promotion gate ----------------------------------------------------------------
    promotion_metric: Metric = Field("roc_auc", description="default per task: roc_auc, or rmse")
    promotion_margin: float = Field(0.0, ge=0.0)

    # --- serving -----------------------------------------------------------------------
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_config: Path = Path("serving/serve_config.yaml")
    admin_token: SecretStr | None = None
    feedback_token: SecretStr | None = Field(
        None, description="bearer token of POST /feedback; the admin token works too"
    )
    feedback_rate_per_s: float = Field(
        100.0, gt=0, description="outcomes one replica accepts per second (bursts of 10 s)"
    )
    max_batch_rows: int = Field(10_000, ge=1)
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="request bodies over this many bytes get a 413"
    )
    serve_haproxy: bool = Field(True, description="Ray Serve HAProxy mode when haproxy exists")
    serve_num_cpus: int = Field(2, ge=1, description="CPUs of the local Ray cluster")
    ray_dashboard_port: int = 8265

    # --- telemetry ---------------------------------------------------------------------
    log_dir: Path | None = None
    elasticsearch_url: str | None = Field(
        None, validation_alias=_env("ELASTICSEARCH_URL", "MLOPS_ELASTICSEARCH_URL")
    )
    elasticsearch_api_key: SecretStr | None = Field(
        None, validation_alias=_env("ELASTICSEARCH_API_KEY", "MLOPS_ELASTICSEARCH_API_KEY")
    )
    elasticsearch_username: str | None = Field(
        None, validation_alias=_env("ELASTICSEARCH_USERNAME", "MLOPS_ELASTICSEARCH_USERNAME")
    )
    elasticsearch_password: SecretStr | None = Field(
        None, validation_alias=_env("ELASTICSEARCH_PASSWORD", "MLOPS_ELASTICSEARCH_PASSWORD")
    )
    kibana_url: str | None = Field(None, validation_alias=_env("KIBANA_URL", "MLOPS_KIBANA_URL"))
    monitor_interval_s: float = Field(10.0, gt=0)
    drift_threshold_psi: float = Field(0.2, gt=0)
    log_max_bytes: int = Field(50 * 1024 * 1024, ge=4096, description="NDJSON rotation size")
    log_backups: int = Field(5, ge=1, description="rotated NDJSON files kept per dataset")
    telemetry_queue_size: int = Field(
        50_000, ge=1, description="events buffered before drops (5 requests at the row limit)"
    )
    telemetry_spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="disk the Elasticsearch spool may use; past it new events are refused, counted",
    )
    ray_metrics_url: str | None = Field(None, description="Ray's Prometheus endpoint to scrape")
    monitor_processes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ray", "serve", "mlops", "mlflow"],
        description="command-line words marking our serving/training processes",
    )
    drift_window: int = Field(1000, ge=10, description="recent predictions compared for drift")

    # --- continuous training (ml/ct.py) ------------------------------------------------
    ct_database: str = Field(
        "", description="predictions and outcomes (SQLAlchemy URL); default var/ct.db"
    )
    ct_record_predictions: bool = Field(
        True, description="serving records each prediction there, for feedback and drift"
    )
    ct_max_age_h: float = Field(168.0, gt=0, description="schedule: retrain an older champion")
    ct_min_drift_rows: int = Field(200, ge=10, description="recent inputs drift needs")
    ct_min_labels: int = Field(200, ge=1, description="labelled predictions performance needs")
    ct_performance_margin: float = Field(
        0.05, ge=0.0, description="live promotion metric below the holdout's by more: fires"
    )
    ct_cooldown_s: float = Field(3600.0, ge=0, description="no retrain sooner after the last")
    ct_lock_stale_s: float = Field(
        600.0, gt=0, description="a CT lock without a heartbeat this long is reclaimed"
    )
    ct_max_feedback_rows: int = Field(
        100_000, ge=1, description="labelled predictions a retrain adds to the source, newest"
    )
    ct_quality_window_h: float = Field(
        24.0, gt=0, description="live quality's time window: labelled predictions this recent"
    )
    ct_retention_days: float = Field(
        30.0, gt=0, description="served predictions older than this are pruned by each CT run"
    )

    # --- backups (ml/backup.py, elk/snapshot.py) ---------------------------------------
    backup_dir: Path | None = Field(None, description="where backups go; default var-backups")
    backup_keep: int = Field(7, ge=1, description="backups kept; older ones are pruned")
    mlflow_artifacts_dir: Path | None = Field(
        None,
        description="the tracking store's artifacts on disk (a server's --artifacts-destination);"
        " default var/mlartifacts for the local store",
    )
    elasticsearch_snapshot_repository: str = Field(
        "mlops-backups", description="Elasticsearch snapshot repository (type fs)"
    )
    elasticsearch_snapshot_location: str = Field(
        "mlops-backups", description="its directory, relative to the server's path.repo"
    )

    # --- notifications -----------------------------------------------------------------
    smtp_host: str | None = Field(None, validation_alias=_env("SMTP_HOST", "MLOPS_SMTP_HOST"))
    smtp_port: int = Field(587, validation_alias=_env("SMTP_PORT", "MLOPS_SMTP_PORT"))
    smtp_starttls: bool = Field(True, validation_alias=_env("SMTP_STARTTLS", "MLOPS_SMTP_STARTTLS"))
    smtp_user: str | None = Field(None, validation_alias=_env("SMTP_USER", "MLOPS_SMTP_USER"))
    smtp_password: SecretStr | None = Field(
        None, validation_alias=_env("SMTP_PASSWORD", "MLOPS_SMTP_PASSWORD")
    )
    smtp_from: str = Field("mlops@localhost", validation_alias=_env("SMTP_FROM", "MLOPS_SMTP_FROM"))
    smtp_to: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("SMTP_TO", "MLOPS_SMTP_TO")
    )
    desktop_notifications: bool = True
    dbus_session_bus_address: str | None = Field(
        None, validation_alias=_env("DBUS_SESSION_BUS_ADDRESS"), description="desktop bus"
    )

    @field_validator("families", "smtp_to", "monitor_processes", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Let `MLOPS_FAMILIES=logreg,hist_gb` work as well as a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: list[str]) -> list[str]:
        """Only names in the family table (`ml.families.FAMILIES`); the error lists them."""
        for name in value:
            if name not in all_families():
                # A custom error: pydantic would prefix a ValueError's text with "Value error".
                raise PydanticCustomError(
                    "unknown_family", "{message}", {"message": str(UnknownFamilyError(name))}
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """The profile's values under whatever was set explicitly (arguments, environment,
        YAML all arrive here merged); an unknown profile is left to the `env` field's check."""
        if not isinstance(data, dict):
            return data
        profile = PROFILES.get(str(data.get("env", "dev")), {})
        return {**{name: value for name, value in profile.items() if name not in data}, **data}

    @property
    def from_profile(self) -> frozenset[str]:
        """The settings that hold their profile's value (MLOPS_ENV)."""
        return frozenset(
            name for name, value in PROFILES[self.env].items() if getattr(self, name) == value
        )

    # Which of DERIVED this instance filled itself (the rest were given).
    _derived: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _derive_defaults(self) -> "Settings":
        """Fill defaults that depend on `var_dir`, so one setting moves all local state."""
        self._fill_derived()
        if not self.families:
            raise ValueError("families: name at least one model family")
        if self.task != "auto":
            # An explicit task fixes the defaults now: `MLOPS_TASK=regression mlops serve`
            # serves mlops-regressor without naming it.
            self._apply_task_defaults(self.task)
        return self

    def _apply_task_defaults(self, task: str) -> None:
        """The task's model name, metrics and families where the user set none of them."""
        unset = set(TASK_DEFAULTS[task]) - self.model_fields_set
        for name in unset:
            setattr(self, name, TASK_DEFAULTS[task][name])
        if "families" not in self.model_fields_set:
            self.families = list(families_for(task))

    def for_task(self, task: Task) -> Self:
        """These settings for a dataset of `task` (the inferred one when `task` is auto): its
        default model name, metrics and families where none was set; ValueError names a
        setting that belongs to the other task."""
        copied = self.model_copy(update={"task": task})
        copied._apply_task_defaults(task)  # pylint: disable=protected-access
        metrics = REGRESSION_METRICS if task == REGRESSION else CLASSIFICATION_METRICS
        for name in ("tuning_metric", "promotion_metric"):
            value = getattr(copied, name)
            if value not in metrics:
                raise ValueError(
                    f"{name} {value!r} is not a {task} metric (MLOPS_{name.upper()}); "
                    f"{task} metrics: {', '.join(metrics)}"
                )
        wrong = [name for name in copied.families if name not in families_for(task)]
        if wrong:
            raise ValueError(
                f"families: {', '.join(wrong)} cannot fit a {task} target (MLOPS_FAMILIES); "
                f"{task} families: {', '.join(families_for(task))}"
            )
        return copied

    def _fill_derived(self) -> None:
        self.var_dir = Path(self.var_dir).resolve()  # model_copy does not validate
        derived = set()
        if self.backup_dir is None:
            # beside var/, not in it: a backup must survive losing var/
            self.backup_dir = self.var_dir.with_name(f"{self.var_dir.name}-backups")
            derived.add("backup_dir")
        self.backup_dir = Path(self.backup_dir).resolve()
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.var_dir / 'mlflow.db'}"
            derived.add("mlflow_tracking_uri")
        if not self.optuna_storage:
            self.optuna_storage = self._default_optuna_storage()
            derived.add("optuna_storage")
        if self.log_dir is None:
            self.log_dir = self.var_dir / "log"
            derived.add("log_dir")
        if not self.ct_database:
            self.ct_database = f"sqlite:///{self.var_dir / 'ct.db'}"
            derived.add("ct_database")
        self._derived = frozenset(derived)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with `update` applied. Pydantic copies without validating; so a new `var_dir`
        or tracking store would leave the paths derived from the old ones behind (the copy
        would write its logs and databases into the original's var/). What this instance
        derived is derived again, unless `update` names it."""
        copied = super().model_copy(update=update, deep=deep)
        if update and DERIVED_FROM & set(update):
            for name in self._derived - set(update):
                setattr(copied, name, DERIVED[name])
            copied._fill_derived()  # pylint: disable=protected-access
        return copied

    def _default_optuna_storage(self) -> str:
        """Follow the tracking store, so two registries never share studies: a SQLite file beside
        it when it is a SQLite file, else var/optuna.db (`unshared_study_storage`).
        Never the tracking database itself: MLflow and Optuna both keep their schema version in
        an `alembic_version` table, so Optuna refuses a database MLflow set up; machines share
        studies through a database of their own in MLOPS_OPTUNA_STORAGE."""
        return _study_file_beside(self.mlflow_tracking_uri) or self._local_optuna_storage()

    def _local_optuna_storage(self) -> str:
        return f"sqlite:///{self.var_dir / 'optuna.db'}"

    @property
    def unshared_study_storage(self) -> bool:
        """True when tracking goes to a server or a database but the studies stay in the local
        default file, where other machines tracking there cannot join them."""
        shared = self.mlflow_tracking_uri.startswith(("http://", "https://", "postgres", "mysql"))
        return shared and self.optuna_storage == self._local_optuna_storage()

    @property
    def decision(self) -> str | None:
        """The metric a binary model's threshold is tuned for, or None: decide at 0.5."""
        if self.task == REGRESSION:
            return None  # a regressor answers its value: there is nothing to decide
        if self.decision_metric == "auto":
            return self.tuning_metric if self.tuning_metric in THRESHOLD_METRICS else None
        return None if self.decision_metric == "none" else self.decision_metric

    @property
    def artifact_root(self) -> Path:
        """Where a local (SQLite) tracking store keeps artifacts."""
        return self.var_dir / "mlartifacts"

    @property
    def artifacts_on_disk(self) -> Path | None:
        """The tracking store's artifact directory when it is reachable as files here."""
        if self.mlflow_artifacts_dir is not None:
            return self.mlflow_artifacts_dir.resolve()
        return self.artifact_root if self.uses_local_tracking else None

    @property
    def uses_local_tracking(self) -> bool:
        """True for the embedded SQLite/file store (artifacts under var/)."""
        return str(self.mlflow_tracking_uri).startswith(("sqlite:", "file:"))

    def masked(self) -> dict[str, str]:
        """The effective settings as strings, secrets replaced by asterisks."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:  # pylint: disable=not-an-iterable
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown[name] = "********"
            elif value is None:
                shown[name] = "-"
            else:
                shown[name] = _mask_url_password(str(value))
        return shown

    def secret_values(self) -> list[str]:
        """Every secret's value (tokens, passwords, API keys, passwords inside URLs): what logs
        must never show (`ml.common.logs` masks them)."""
        values = []
        for name in type(self).model_fields:  # pylint: disable=not-an-iterable
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
            elif isinstance(value, str) and (password := _url_password(value)):
                values.append(password)
        return [value for value in values if value]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get("MLOPS_CONFIG")
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise FileNotFoundError(f"MLOPS_CONFIG: no such settings file: {yaml_path}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def _study_file_beside(tracking_uri: str) -> str | None:
    """The study file beside a SQLite tracking file: `optuna.db` beside `mlflow.db`,
    `<name>.optuna.db` beside any other `<name>.db`; None for other stores."""
    prefix = "sqlite:///"
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not tracking_uri.startswith(prefix) or path in {"", ":memory:"}:
        return None
    tracking_file = Path(path)
    name = "optuna.db" if tracking_file.name == "mlflow.db" else f"{tracking_file.stem}.optuna.db"
    return f"{prefix}{tracking_file.with_name(name)}"


def _url_password(text: str) -> str | None:
    """The password of a `scheme://user:password@host` URL, if it has one."""
    if "://" not in text or "@" not in text:
        return None
    credentials = text.split("://", 1)[1].rsplit("@", 1)[0]
    return credentials.split(":", 1)[1] if ":" in credentials else None


def _mask_url_password(text: str) -> str:
    """Hide the password part of `scheme://user:password@host` URLs."""
    if "://" not in text or "@" not in text:
        return text
    scheme, rest = text.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    if ":" not in credentials:
        return text
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(...)`)."""
    return Settings()
