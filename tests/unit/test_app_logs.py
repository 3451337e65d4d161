"""ml.common.logs: the ECS JSON file handler the CLI and the collector install (ecs-logging's
real formatter), its secret masking, and that the console is left as it was. Shipping the
files with real Filebeat into real Elasticsearch: tests/integration/test_filebeat.py."""

# pytest fixtures are passed by parameter name: pylint: disable=redefined-outer-name
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ml.common.cli import install_app_logs
from ml.common.logs import (
    APP_DATASET,
    MASK,
    EcsFileHandler,
    install_json_logs,
    log_file,
    log_to_console,
)
from ml.config import Settings
from ml.model_ref import ModelRef
from ml.pipeline import PipelineResult, result_fields
from ml.predict import load_failure_fields
from ml.registry import GateDecision, decision_fields
from ml.training import TrainedModel
from ml.tuning import TuningResult


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (handlers and level) after the test."""
    logger = logging.getLogger()
    saved = (logger.handlers[:], logger.level)
    yield logger
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])


def _lines(path: Path) -> list[dict[str, Any]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.usefixtures("root")
def test_a_record_becomes_one_ecs_object_with_service_dataset_and_extra_fields(
    tmp_path: Path,
) -> None:
    path = install_json_logs(tmp_path / "log", "mlops")
    assert path == log_file(tmp_path / "log", "mlops") == tmp_path / "log" / "mlops.log.json"
    decision = GateDecision(False, "worse", "roc_auc", "4", 0.91, "3", 0.93)
    logging.getLogger("ml.registry").info("gate: v4 rejected", extra=decision_fields("m", decision))

    (line,) = _lines(path)
    assert line["message"] == "gate: v4 rejected"
    assert line["log.level"] == "info"
    assert line["log"]["logger"] == "ml.registry"
    assert line["service"]["name"] == "mlops"
    assert line["event"]["dataset"] == APP_DATASET
    assert len(line["event"]["id"]) == 32  # Filebeat's document id
    assert line["event"]["action"] == "promotion-gate"
    assert line["event"]["outcome"] == "failure"
    assert line["ecs.version"] and line["@timestamp"].endswith("Z")
    assert line["mlops"]["model"] == {"name": "m", "version": "4"}
    assert line["mlops"]["promotion"] == {
        "decision": "rejected",
        "reason": "worse",
        "metric": "roc_auc",
        "challenger_version": "4",
        "champion_version": "3",
        "challenger_score": 0.91,
        "champion_score": 0.93,
    }
    assert "original" not in line["log"]  # not the message twice


@pytest.mark.usefixtures("root")
def test_an_exception_is_error_fields_and_ids_differ_per_record(tmp_path: Path) -> None:
    path = install_json_logs(tmp_path, "mlops")
    try:
        raise OSError("disk gone")
    except OSError as exc:
        logging.getLogger("ml.predict").error(
            "load failed", exc_info=True, extra=load_failure_fields("models:/m/2", exc, "m", "2")
        )
    logging.getLogger("ml.predict").error("again")
    first, second = _lines(path)
    assert first["log.level"] == "error"
    assert first["error"]["type"] == "OSError"
    assert first["error"]["message"] == "disk gone"
    assert "raise OSError" in first["error"]["stack_trace"]
    assert first["mlops"]["model"] == {"name": "m", "version": "2", "uri": "models:/m/2"}
    assert first["event"]["id"] != second["event"]["id"]


def test_records_below_info_are_left_out_and_library_records_come_in(
    root: logging.Logger, tmp_path: Path
) -> None:
    root.setLevel(logging.WARNING)
    path = install_json_logs(tmp_path, "mlops")
    assert root.level == logging.INFO  # lowered so INFO records reach the handler
    logging.getLogger("ml.pipeline").debug("not this")
    logging.getLogger("some.library").info("this")
    assert [line["message"] for line in _lines(path)] == ["this"]


def test_installed_once_per_process_a_new_service_replaces_the_file(
    root: logging.Logger, tmp_path: Path
) -> None:
    install_json_logs(tmp_path, "mlops")
    install_json_logs(tmp_path, "mlops")
    assert sum(isinstance(h, EcsFileHandler) for h in root.handlers) == 1
    monitor = install_json_logs(tmp_path, "mlops-monitor")
    (handler,) = [h for h in root.handlers if isinstance(h, EcsFileHandler)]
    assert Path(handler.baseFilename) == monitor.resolve()
    logging.getLogger("elk.collectors.host").info("sampled")
    assert _lines(monitor)[0]["service"]["name"] == "mlops-monitor"
    assert not (tmp_path / "mlops.log.json").exists()  # nothing logged there: no empty file


@pytest.mark.usefixtures("root")
def test_secrets_are_masked_in_message_extras_and_exception_text(tmp_path: Path) -> None:
    quoted = 'pa"ss\\word-9'  # JSON escapes it inside a string: masked in that form too
    path = install_json_logs(tmp_path, "mlops", secrets=["tok-123456", quoted, "ab"])
    log = logging.getLogger("ml.notify")
    log.warning("login with tok-123456 failed", extra={"labels.url": f"http://u:{quoted}@h"})
    try:
        raise RuntimeError(f"server echoed {quoted}")
    except RuntimeError:
        log.exception("boom")
    log.info("ab stays: too short to be one of our secrets")
    text = path.read_text()
    assert "tok-123456" not in text and "word-9" not in text
    first, second, third = _lines(path)
    assert first["message"] == f"login with {MASK} failed"
    assert first["labels"]["url"] == f"http://u:{MASK}@h"
    assert second["error"]["message"] == f"server echoed {MASK}"
    assert third["message"].startswith("ab stays")


@pytest.mark.usefixtures("root")
def test_the_cli_install_masks_every_secret_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        admin_token=SecretStr("admin-tok-1"),
        smtp_password=SecretStr("smtp-pw-2"),
        elasticsearch_password=SecretStr("es-pw-3"),
        ct_database="postgresql://ct:db-pw-4@db/ct",
    )
    assert set(settings.secret_values()) >= {"admin-tok-1", "smtp-pw-2", "es-pw-3", "db-pw-4"}
    path = install_app_logs(settings, "mlops")
    assert path == tmp_path / "var" / "log" / "mlops.log.json"
    logging.getLogger("ml").error("admin-tok-1 smtp-pw-2 es-pw-3 postgresql://ct:db-pw-4@db/ct")
    (line,) = _lines(path)
    assert line["message"] == f"{MASK} {MASK} {MASK} postgresql://ct:{MASK}@db/ct"


def test_the_console_keeps_python_s_last_resort_lines(
    root: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a handler of its own a process prints warnings on stderr (Python's last
    resort); a handler on the root would silence that, so the install keeps it."""
    root.handlers[:] = []
    install_json_logs(tmp_path, "mlops")
    logging.getLogger("ml.tracking").warning("still on the console")
    logging.getLogger("ml.tracking").info("only in the file")
    assert capsys.readouterr().err == "still on the console\n"
    assert len(_lines(tmp_path / "mlops.log.json")) == 2


def test_console_lines_like_basic_config_with_the_file_handler_installed(
    root: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root.handlers[:] = []
    install_json_logs(tmp_path, "mlops-monitor")
    log_to_console("%(levelname)s %(name)s: %(message)s")
    logging.getLogger("elk.collectors.host").info("sampled")
    assert capsys.readouterr().err == "INFO elk.collectors.host: sampled\n"
    assert logging.lastResort not in root.handlers
    assert _lines(tmp_path / "mlops-monitor.log.json")[0]["message"] == "sampled"


def test_a_training_run_s_result_fields() -> None:
    """`run_pipeline`'s closing record: what was registered, the study, the decision, scores."""
    result = PipelineResult(
        report=None,  # type: ignore[arg-type]  # not part of the record
        tuning=TuningResult("study-x", {"family": "logreg"}, 0.97, 3, 1, 0),
        # the fitted pipeline is not part of the record
        trained=TrainedModel(
            None, ModelRef("m", "5"), {"roc_auc": 0.98, "f1": 0.9}  # type: ignore[arg-type]
        ),
        decision=GateDecision(True, "beats", "roc_auc", "5", 0.98, "4", 0.95),
        run_id="run-1",
        experiment_id="1",
        tracking_uri="sqlite:///x.db",
        stage_seconds={"tune": 1.5, "train": 0.5},
    )
    fields = result_fields(Settings(model_name="m"), result)
    assert fields["mlops.model.name"] == "m" and fields["mlops.model.version"] == "5"
    assert fields["mlops.promotion.decision"] == "promoted"
    assert fields["mlops.study.name"] == "study-x" and fields["mlops.study.best_value"] == 0.97
    assert fields["mlops.study.trials.complete"] == 3 and fields["mlops.study.trials.pruned"] == 1
    assert fields["mlops.training.holdout.roc_auc"] == 0.98
    assert fields["mlops.training.run_id"] == "run-1"
    assert fields["event.duration"] == 2_000_000_000


@pytest.mark.usefixtures("root")
def test_every_command_logs_to_var_log_and_bad_settings_stay_the_command_s_error(
    tmp_path: Path,
) -> None:
    """The CLI's callback installs the handler before a command runs; settings the environment
    gets wrong install nothing and the command reports them as before (exit 2, one line)."""
    from typer.testing import CliRunner

    from ml.cli import app

    done = CliRunner().invoke(app, ["config", "show"], env={"MLOPS_VAR_DIR": str(tmp_path)})
    assert done.exit_code == 0, done.output
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, EcsFileHandler)]
    assert Path(handler.baseFilename) == tmp_path / "log" / "mlops.log.json"
    logging.getLogger().removeHandler(handler)
    handler.close()

    bad = {"MLOPS_VAR_DIR": str(tmp_path), "MLOPS_TRIALS": "0"}
    done = CliRunner().invoke(app, ["config", "show"], env=bad)
    assert done.exit_code == 2 and "trials" in done.output
    assert not any(isinstance(h, EcsFileHandler) for h in logging.getLogger().handlers)
