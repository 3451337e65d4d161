"""The `mlops` CLI: clear errors with exit code 2 and nothing registered; masking; predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from serving.main import app  # the `mlops` command, all layers
from tests.fixtures.trained_model import RegisteredModel
from tests.unit.test_data import mixed_frame

pytestmark = pytest.mark.integration
runner = CliRunner()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "MLOPS_VAR_DIR": str(tmp_path / "var"),
        "MLOPS_TRIALS": "2",
        "MLOPS_FAMILIES": "logreg",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
    }
    env.update(extra)
    return env


def registered_models(tmp_path: Path) -> list[str]:
    db = tmp_path / "m.db"
    if not db.exists():
        return []
    store = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not the process default
    return [model.name for model in client.search_registered_models()]


def write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


BAD_INPUTS = {
    "missing file": (lambda p: str(p / "nope.csv"), "y", "no such file"),
    "empty file": (lambda p: write(p, "empty.csv", ""), "y", "is empty"),
    "unreadable csv": (
        lambda p: write(p, "quote.csv", 'a,y\n1,"x\n2,y\n'),  # a quote that never closes
        "y",
        "cannot be read as CSV",
    ),
    "unreadable parquet": (
        lambda p: write(p, "bin.parquet", "not parquet"),
        "y",
        "cannot be read as Parquet",
    ),
    "missing target": (lambda p: write(p, "t.csv", "a,b\n1,2\n"), "y", "'y' not found"),
    "single class": (lambda p: write(p, "one.csv", "a,y\n" + "1,x\n" * 20), "y", "two classes"),
    "class too small": (
        lambda p: write(p, "small.csv", "a,y\n" + "1,x\n" * 20 + "2,z\n"),
        "y",
        "fewer than",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_message_and_registers_nothing(
    tmp_path: Path, case: str
) -> None:
    make_path, target, message = BAD_INPUTS[case]
    result = runner.invoke(
        app, ["pipeline", "--data", make_path(tmp_path), "--target", target], env=cli_env(tmp_path)
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert registered_models(tmp_path) == []


def test_unknown_model_family_in_settings_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline"], env=cli_env(tmp_path, MLOPS_FAMILIES="xgboost"))
    assert result.exit_code == 2
    assert "families" in result.output and "xgboost" in result.output
    assert registered_models(tmp_path) == []


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        SMTP_PASSWORD="hunter2-secret",
        MLFLOW_TRACKING_URI="postgresql://mlflow:pg-secret@db/mlflow",
    )
    result = runner.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 0
    assert "hunter2-secret" not in result.output and "pg-secret" not in result.output
    assert "********" in result.output


def test_console_script_trains_predicts_and_refuses_unknown_version(tmp_path: Path) -> None:
    """The installed `mlops` entry point, as a user runs it, on a mixed CSV."""
    csv = tmp_path / "churn.csv"
    frame = mixed_frame(200)
    frame.to_csv(csv, index=False)
    mlops = str(Path(sys.executable).with_name("mlops"))
    env = {**os.environ, **cli_env(tmp_path)}
    trained = subprocess.run(
        [mlops, "pipeline", "--data", str(csv), "--target", "churned"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "Training summary" in trained.stdout

    rows = tmp_path / "rows.csv"
    frame.drop(columns="churned").head(5).to_csv(rows, index=False)
    predicted = subprocess.run(
        [mlops, "predict", "--input", str(rows)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    table = pd.read_csv(pd.io.common.StringIO(predicted.stdout))
    assert len(table) == 5 and set(table["prediction"]) <= {True, False}

    refused = subprocess.run(
        [mlops, "promote", "--version", "99"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert refused.returncode == 2
    assert "no version 99" in refused.stderr and "Traceback" not in refused.stderr


def test_mlops_run_directly_sends_no_usage_reports(tmp_path: Path) -> None:
    """The README runs `.venv/bin/mlops ...` outside make too: the project's opt-out from
    MLflow's usage telemetry holds there (with it on, MLflow keeps an id in
    ~/.config/mlflow/telemetry.json)."""
    home = tmp_path / "home"
    home.mkdir()
    # A user's shell: MLflow also stays quiet by itself under pytest or CI, so not those.
    quiet = {"MLFLOW_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST", "CI", "JENKINS_URL", "DO_NOT_TRACK"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in quiet and not key.startswith("MLOPS_")
    }
    env.update({"HOME": str(home), "MLOPS_VAR_DIR": str(tmp_path / "var")})
    mlops = Path(sys.executable).with_name("mlops")
    done = subprocess.run(
        [str(mlops), "ct", "check"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no champion" in done.stdout
    assert not (home / ".config" / "mlflow").exists()


# --- mlops evaluate ---------------------------------------------------------------------------


def evaluate_env(model: RegisteredModel, tmp_path: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": model.settings.mlflow_tracking_uri,
        "MLOPS_MODEL_NAME": model.name,
        "MLOPS_VAR_DIR": str(tmp_path / "var"),
    }


def test_evaluate_scores_a_labelled_file_with_the_champion(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    """The session's champion on labelled demo rows: the metrics and the confusion matrix are
    what scikit-learn computes from the same version's predictions, the plots are written."""
    import mlflow
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from ml.data import load_frame
    from ml.predict import load_version, resolve_version

    labelled = load_frame("demo").sample(150, random_state=3)
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    result = runner.invoke(
        app,
        ["evaluate", "--data", str(tmp_path / "labelled.csv")],
        env=evaluate_env(registered_model, tmp_path),
    )
    assert result.exit_code == 0, result.output

    mlflow.set_tracking_uri(registered_model.settings.mlflow_tracking_uri)
    version = resolve_version(registered_model.name)
    model = load_version(registered_model.name, version)
    predicted = model.predict_frame(labelled.drop(columns="target"))["prediction"]
    truth = labelled["target"]
    accuracy = accuracy_score(truth, predicted)
    reports = tmp_path / "var" / "reports" / "evaluate" / f"{registered_model.name}-v{version}"
    written = json.loads((reports / "metrics.json").read_text())
    assert written["rows"] == 150 and written["target"] == "target"
    assert written["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert written["metrics"]["f1"] == pytest.approx(
        f1_score(truth, predicted, pos_label=model.classes[1])
    )
    matrix = confusion_matrix(truth, predicted, labels=model.classes)
    assert written["confusion_matrix"] == matrix.tolist()
    assert f"{accuracy:.4f}" in result.output and "roc_auc (gate)" in result.output
    assert "Confusion matrix" in result.output
    for plot in ("confusion_matrix.png", "roc_curve.png"):
        assert (reports / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_a_file_without_labels_naming_file_and_column(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    from ml.data import load_frame

    unlabelled = tmp_path / "unlabelled.csv"
    load_frame("demo").drop(columns="target").head(20).to_csv(unlabelled, index=False)
    wrong = load_frame("demo").head(20).assign(target="maybe")
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    env = evaluate_env(registered_model, tmp_path)
    version = registered_model.version

    result = runner.invoke(
        app, ["evaluate", "--data", str(unlabelled), "--version", version], env=env
    )
    assert result.exit_code == 2, result.output
    assert "unlabelled.csv: target column 'target' not found" in result.output
    assert "mlops predict" in result.output and "Traceback" not in result.output

    result = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "wrong.csv")], env=env)
    assert result.exit_code == 2, result.output
    assert "wrong.csv: target column 'target' holds labels" in result.output
    assert "'maybe'" in result.output
    assert not (tmp_path / "var" / "reports").exists()
