"""`MLOPS_ENV`: what each profile changes, what wins over it, and the documented table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml.config import PROFILES, Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_dev_is_the_embedded_defaults(tmp_path: Path) -> None:
    assert PROFILES["dev"] == {}
    assert Settings(var_dir=tmp_path).env == "dev"


def test_prod_changes_exactly_its_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLOPS_ENV", "prod")
    prod = Settings(var_dir=tmp_path)
    dev = Settings(var_dir=tmp_path, env="dev")
    changed = {
        name
        for name in Settings.model_fields
        if getattr(prod, name) != getattr(dev, name) and name != "env"
    }
    assert changed == set(PROFILES["prod"])
    assert prod.from_profile == set(PROFILES["prod"])
    assert dev.from_profile == set()


def test_explicit_settings_win_over_the_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLOPS_ENV", "prod")
    monkeypatch.setenv("MLOPS_TRIALS", "7")
    settings = Settings(var_dir=tmp_path, cv_folds=3)
    assert (settings.trials, settings.cv_folds, settings.backup_keep) == (7, 3, 14)
    assert "trials" not in settings.from_profile and "backup_keep" in settings.from_profile


def test_an_unknown_profile_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ENV", "staging")
    with pytest.raises(ValueError, match="env"):
        Settings()


def test_docs_table_is_the_profiles_table(tmp_path: Path) -> None:
    text = DOCS.read_text()
    table = text.split("<!-- profiles:", 1)[1].split("<!-- /profiles -->", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|", table, re.MULTILINE)
    dev = Settings(var_dir=tmp_path)
    assert {name for name, _, _ in rows} == set(PROFILES["prod"])
    for name, dev_value, prod_value in rows:
        assert dev_value.strip() == str(getattr(dev, name)), name
        assert prod_value.strip() == str(PROFILES["prod"][name]), name
