"""ml.config.Settings: what follows `var_dir`, also in a copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import DERIVED, Settings


@pytest.fixture(autouse=True)
def _no_state_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_CONFIG", "MLOPS_VAR_DIR", "MLOPS_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in DERIVED:
        monkeypatch.delenv(f"MLOPS_{name.upper()}", raising=False)


def test_a_copy_with_another_var_dir_moves_everything_derived_from_it(tmp_path: Path) -> None:
    """Pydantic's model_copy does not validate: without re-deriving, the copy's logs and
    databases stayed in the original's var/ (two test sessions wrote to one file)."""
    old, new = tmp_path / "old", tmp_path / "new"
    moved = Settings(var_dir=old).model_copy(update={"var_dir": new})
    assert moved.var_dir == new
    assert moved.log_dir == new / "log"
    assert moved.mlflow_tracking_uri == f"sqlite:///{new / 'mlflow.db'}"
    assert moved.optuna_storage == f"sqlite:///{new / 'optuna.db'}"
    assert moved.ct_database == f"sqlite:///{new / 'ct.db'}"
    assert moved.backup_dir == tmp_path / "new-backups"  # beside var/, as derived
    assert moved == Settings(var_dir=new)  # as if built with it


def test_a_copy_keeps_what_was_given_and_what_the_update_names(tmp_path: Path) -> None:
    given = Settings(
        var_dir=tmp_path / "old",
        log_dir=tmp_path / "logs",
        mlflow_tracking_uri="http://mlflow.example:5000",
    )
    moved = given.model_copy(
        update={"var_dir": tmp_path / "new", "ct_database": "sqlite:///elsewhere.db"}
    )
    assert moved.log_dir == tmp_path / "logs"  # given: kept
    assert moved.mlflow_tracking_uri == "http://mlflow.example:5000"  # given: kept
    assert moved.ct_database == "sqlite:///elsewhere.db"  # named by the update
    assert moved.optuna_storage == f"sqlite:///{tmp_path / 'new' / 'optuna.db'}"  # derived


def test_a_copy_with_another_tracking_store_moves_the_study_file(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    tracking = f"sqlite:///{tmp_path / 'team-a.db'}"
    moved = settings.model_copy(update={"mlflow_tracking_uri": tracking})
    assert moved.optuna_storage == f"sqlite:///{tmp_path / 'team-a.optuna.db'}"
    assert moved.log_dir == settings.log_dir  # var_dir did not change
    unrelated = settings.model_copy(update={"trials": 3})
    assert unrelated.optuna_storage == settings.optuna_storage and unrelated.trials == 3


def test_a_relative_var_dir_in_a_copy_is_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    moved = Settings(var_dir=tmp_path / "a").model_copy(update={"var_dir": "b"})
    assert moved.var_dir == tmp_path / "b" and moved.log_dir == tmp_path / "b" / "log"
