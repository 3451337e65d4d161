"""ml.registry: the promotion gate and the manual override, on a real MLflow SQLite store.

The versions are real registered pipelines: a strong one (logistic regression on the bundled
data) and a weak one (the same model fitted on shuffled labels, so it ranks the holdout at
about chance), so each test knows which side must win.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml.config import Settings
from ml.data import Dataset, Split, load_dataset, split
from ml.common.tracking import configure_tracking
from ml.registry import CHAMPION, GateDecision, RegistryError, gate_lock, promote, run_gate
from ml.training import fit_best, log_and_register

LOGREG = {"family": "logreg", "C": 1.0}


@pytest.fixture(scope="module")
def demo() -> tuple[Dataset, Split]:
    dataset = load_dataset("demo", None)
    return dataset, split(dataset, 0.2, 42)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local store for the module; each test registers under its own model name."""
    return tmp_path_factory.mktemp("registry") / "var"


def _client(store: Path, model_name: str) -> tuple[MlflowClient, Settings]:
    settings = Settings(var_dir=store, model_name=model_name)
    configure_tracking(settings)
    return MlflowClient(), settings


def _register(settings: Settings, demo: tuple[Dataset, Split], weak: bool = False) -> str:
    """Fit and register one version (alias `challenger`); returns its version number."""
    import mlflow

    dataset, holdout_split = demo
    fitted_on = holdout_split
    if weak:
        shuffled = holdout_split.y_train.sample(frac=1.0, random_state=0)
        fitted_on = Split(
            holdout_split.X_train,
            holdout_split.X_holdout,
            shuffled.set_axis(holdout_split.y_train.index),
            holdout_split.y_holdout,
        )
    with mlflow.start_run():
        model = fit_best(LOGREG, dataset, fitted_on, seed=42)
        return log_and_register(model, LOGREG, dataset, holdout_split, settings).version


def _champion(client: MlflowClient, name: str) -> str:
    """The champion's version number (the SQLite store answers an int, a server a string)."""
    return str(client.get_model_version_by_alias(name, CHAMPION).version)


def _gate(client: MlflowClient, name: str, version: str, demo, margin: float = 0.0):
    return run_gate(client, name, version, demo[1], "roc_auc", margin)


def test_first_version_becomes_champion_with_its_decision_recorded(store, demo) -> None:
    client, settings = _client(store, "first")
    version = _register(settings, demo)
    decision = _gate(client, "first", version, demo)
    assert decision.promoted and decision.reason == "no champion yet"
    assert _champion(client, "first") == version
    tags = client.get_model_version("first", version).tags
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.champion_version"] == "-" and tags["gate.champion_score"] == "-"
    assert float(tags["gate.challenger_score"]) == pytest.approx(decision.challenger_score)


def test_weaker_challenger_is_rejected_and_the_champion_stays(store, demo) -> None:
    client, settings = _client(store, "weaker")
    strong = _register(settings, demo)
    _gate(client, "weaker", strong, demo)
    weak = _register(settings, demo, weak=True)
    decision = _gate(client, "weaker", weak, demo)
    assert not decision.promoted
    assert decision.champion_version == strong
    assert decision.challenger_score < decision.champion_score
    assert _champion(client, "weaker") == strong
    assert str(client.get_model_version_by_alias("weaker", "challenger").version) == weak
    tags = client.get_model_version("weaker", weak).tags
    assert tags["gate.decision"] == "rejected"
    assert float(tags["gate.champion_score"]) == pytest.approx(decision.champion_score)


def test_stronger_challenger_replaces_the_champion(store, demo) -> None:
    client, settings = _client(store, "stronger")
    weak = _register(settings, demo, weak=True)
    _gate(client, "stronger", weak, demo)
    strong = _register(settings, demo)
    decision = _gate(client, "stronger", strong, demo)
    assert decision.promoted and "beats champion" in decision.reason
    assert decision.challenger_score > decision.champion_score + 0.2
    assert _champion(client, "stronger") == strong


def test_a_win_smaller_than_the_margin_or_a_tie_keeps_the_champion(store, demo) -> None:
    client, settings = _client(store, "margin")
    weak = _register(settings, demo, weak=True)
    _gate(client, "margin", weak, demo)
    strong = _register(settings, demo)
    decision = _gate(client, "margin", strong, demo, margin=1.0)  # ROC AUC cannot win by 1
    assert not decision.promoted and "does not beat" in decision.reason
    assert _champion(client, "margin") == weak
    promote(client, "margin", strong)
    same = _register(settings, demo)  # the same fit: the same holdout score, a tie
    tie = _gate(client, "margin", same, demo)
    assert tie.challenger_score == tie.champion_score and not tie.promoted
    assert _champion(client, "margin") == strong


def test_gating_the_champion_itself_changes_nothing(store, demo) -> None:
    client, settings = _client(store, "itself")
    version = _register(settings, demo)
    _gate(client, "itself", version, demo)
    again = _gate(client, "itself", version, demo)
    assert not again.promoted and again.reason == "already champion"
    assert _champion(client, "itself") == version


def test_manual_promotion_records_who_decided_and_refuses_unknown_versions(store, demo) -> None:
    client, settings = _client(store, "manual")
    first = _register(settings, demo)
    _gate(client, "manual", first, demo)
    second = _register(settings, demo, weak=True)
    _gate(client, "manual", second, demo)  # rejected: the person overrides it below
    promote(client, "manual", second, reason="rollback drill")
    assert _champion(client, "manual") == second
    tags = client.get_model_version("manual", second).tags
    assert tags["gate.decision"] == "promoted" and tags["gate.reason"] == "rollback drill"
    assert tags["gate.champion_version"] == first
    with pytest.raises(RegistryError, match=r"has no version 9; versions: 1, 2"):
        promote(client, "manual", "9")
    with pytest.raises(RegistryError, match="'nobody' is not registered"):
        promote(client, "nobody", "1")


def test_a_manual_promotion_waits_for_a_running_gate(store, demo, tmp_path: Path) -> None:
    """`mlops promote` takes the gate's lock, so it cannot land between a gate's read of the
    champion and its alias move."""
    client, settings = _client(store, "waits")
    first = _register(settings, demo)
    _gate(client, "waits", first, demo)
    second = _register(settings, demo, weak=True)
    lock_database = f"sqlite:///{tmp_path / 'ct.db'}"
    with gate_lock(lock_database, "waits"):  # a gate is deciding
        manual = threading.Thread(
            target=promote, args=(client, "waits", second), kwargs={"lock_database": lock_database}
        )
        manual.start()
        manual.join(timeout=2)  # time for a promotion that ignored the lock to land
        assert manual.is_alive() and _champion(client, "waits") == first
    manual.join()
    assert _champion(client, "waits") == second


def test_decision_tags_write_missing_scores_as_a_dash() -> None:
    decision = GateDecision(True, "no champion yet", "roc_auc", "1", 0.97, None, None)
    assert decision.as_tags() == {
        "gate.promoted": "True",
        "gate.reason": "no champion yet",
        "gate.metric": "roc_auc",
        "gate.challenger_version": "1",
        "gate.challenger_score": "0.97",
        "gate.champion_version": "-",
        "gate.champion_score": "-",
    }


def test_load_pipeline_gives_the_registered_pipeline_with_the_tables_trusted_types(
    store: Path, demo: tuple[Dataset, Split]
) -> None:
    """The gate scores the registered pipeline (its coercion step first); the MLmodel file
    keeps the family's trusted types and the step's (what lets versions registered before and
    after the family table load alike)."""
    import mlflow
    from sklearn.pipeline import Pipeline

    from ml.families import family
    from ml.features import COERCION_TRUSTED_TYPES, CoerceFeatures
    from ml.model_ref import ModelRef
    from ml.registry import load_pipeline

    _, settings = _client(store, "load-pipeline")
    ref = ModelRef(settings.model_name, _register(settings, demo))
    pipeline = load_pipeline(ref)
    assert isinstance(pipeline, Pipeline) and isinstance(pipeline[0], CoerceFeatures)
    assert pipeline.predict(demo[1].X_holdout).shape == (len(demo[1].X_holdout),)
    flavor = mlflow.models.get_model_info(ref.uri).flavors["sklearn"]
    assert flavor["skops_trusted_types"] == [
        *family("logreg").skops_trusted_types,
        *COERCION_TRUSTED_TYPES,
    ]


def test_the_gate_decision_is_an_ecs_log_record_with_its_fields(store, demo, tmp_path) -> None:
    """What Kibana finds of a gate decision: the real gate's record through the handler the
    CLI installs (ml.common.logs)."""
    import json
    import logging

    from ml.common.logs import EcsFileHandler, install_json_logs

    client, settings = _client(store, "logged")
    version = _register(settings, demo)
    root = logging.getLogger()
    saved_level = root.level
    path = install_json_logs(tmp_path, "mlops")
    try:
        decision = _gate(client, "logged", version, demo)
    finally:
        for handler in [h for h in root.handlers if isinstance(h, EcsFileHandler)]:
            root.removeHandler(handler)
            handler.close()
        if logging.lastResort in root.handlers:
            root.removeHandler(logging.lastResort)
        root.setLevel(saved_level)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (gate,) = [r for r in records if r.get("event", {}).get("action") == "promotion-gate"]
    assert gate["log.level"] == "info" and gate["log"]["logger"] == "ml.registry"
    assert f"logged version {version} promoted" in gate["message"]
    assert gate["mlops"]["model"] == {"name": "logged", "version": version}
    assert gate["mlops"]["promotion"]["decision"] == "promoted"
    assert gate["mlops"]["promotion"]["reason"] == "no champion yet"
    assert gate["mlops"]["promotion"]["challenger_score"] == decision.challenger_score
