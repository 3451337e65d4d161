"""`mlops pipeline` killed with SIGTERM and SIGKILL in tuning, in registration and in the gate,
then run again.

The real command runs in a subprocess on one var/ (local SQLite MLflow and Optuna stores); each
fault is sent when the command's own output says the stage started (and, in tuning, when its
trial workers are up), never after a blind sleep. What must hold: SIGTERM ends the trial workers
and the MLflow writer and says where it stopped (exit 143); after SIGKILL the children die with
the parent (the kernel's parent-death signal); no alias ever points at a version whose files were
not all stored (its sha256 tag is set before the alias); the next run succeeds and resumes the
same Optuna study, whose interrupted trials are FAIL, none left RUNNING (docs/reliability.md).

The gate takes a quarter of a second on this data, too short to hit from the output; so the test
holds the model's promotion lock (`ml.registry.gate_lock`), and the kill lands while the gate
waits for it, inside the gate for certain.
"""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ml.integrity import DIGEST_TAG
from ml.registry import gate_lock
from ml.storage import study_storage
from tests.resilience.chain_support import (
    MODEL,
    Command,
    aliased_versions_are_whole,
    eventually,
    gone,
    mlops_env,
    run_mlops,
)

pytestmark = [pytest.mark.resilience, pytest.mark.integration, pytest.mark.slow]

LONG_TUNING = ["pipeline", "--trials", "500", "--timeout", "120", "--n-jobs", "2"]
SHORT = ["pipeline", "--trials", "2", "--n-jobs", "2"]


def start_and_reach_tuning(env: dict[str, str]) -> Command:
    """A long study, once its two trial workers and its MLflow writer run."""
    command = Command.start(LONG_TUNING, env)
    command.wait_for_line("stage tune started")
    command.wait_for(lambda: len(command.children()) >= 3, "the trial workers and writer")
    command.wait_for_line("trial ")  # a trial finished: the workers are inside the study
    return command


def test_killed_pipelines_leave_no_half_registered_alias_and_the_next_run_resumes(
    tmp_path: Path,
) -> None:
    var_dir = tmp_path / "var"
    env = mlops_env(var_dir)
    client = MlflowClient(f"sqlite:///{var_dir / 'mlflow.db'}")

    # SIGTERM in tuning: children stopped, one line says where, exit 143.
    command = start_and_reach_tuning(env)
    children = command.children()
    command.process.send_signal(signal.SIGTERM)
    assert command.finish() == 128 + signal.SIGTERM, command.output[-3000:]
    assert gone(children), [child.pid for child in children]
    assert "mlops pipeline stopped by SIGTERM in stage tune" in command.output
    assert "Traceback" not in command.output, command.output[-3000:]

    # SIGKILL in tuning: nothing runs in the parent any more; the children follow it.
    command = start_and_reach_tuning(env)
    children = command.children()
    command.process.send_signal(signal.SIGKILL)
    assert command.finish() == -signal.SIGKILL
    eventually(lambda: gone(children), "the orphaned children to exit")  # mlops is dead
    assert aliased_versions_are_whole(client, MODEL) == {}

    # SIGKILL in registration (refit, log, register, digest, tags, then the alias).
    command = Command.start(SHORT, env)
    command.wait_for_line("stage train started")
    command.process.send_signal(signal.SIGKILL)
    assert command.finish() == -signal.SIGKILL
    aliases = aliased_versions_are_whole(client, MODEL)  # whatever the kill interrupted
    if "stage train success" not in command.output:  # a busy machine can print late
        assert aliases == {}

    # The next run succeeds, in the same study.
    command = run_mlops(SHORT, env)
    assert command.process.returncode == 0, command.output[-3000:]
    aliases = aliased_versions_are_whole(client, MODEL)
    assert set(aliases) == {"challenger", "champion"}, command.output[-3000:]
    champion = client.get_model_version(MODEL, aliases["champion"])
    assert champion.tags["gate.decision"] == "promoted" and champion.tags[DIGEST_TAG]

    storage = study_storage(f"sqlite:///{var_dir / 'optuna.db'}")
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    states = [trial.state for trial in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert states.count(optuna.trial.TrialState.FAIL) >= 2  # one a worker, each interrupted run
    assert states.count(optuna.trial.TrialState.COMPLETE) > 2  # the last run added to the others


def test_a_pipeline_killed_in_the_gate_decides_nothing_and_the_next_run_promotes(
    tmp_path: Path,
) -> None:
    var_dir = tmp_path / "var"
    env = mlops_env(var_dir)
    client = MlflowClient(f"sqlite:///{var_dir / 'mlflow.db'}")
    command = Command.start(SHORT, env)
    # Taken once the stores are set up: on SQLite the lock holds the CT database's file, which
    # the pipeline's store set-up locks too. Registration (refit, log) outlasts taking it.
    command.wait_for_line("stage train started")
    with gate_lock(f"sqlite:///{var_dir / 'ct.db'}", MODEL):
        command.wait_for_line("gate: waiting for the promotion lock")
        command.process.send_signal(signal.SIGKILL)
        assert command.finish() == -signal.SIGKILL
    # registered with its digest and the challenger alias; no decision, no champion
    assert _as_text(aliased_versions_are_whole(client, MODEL)) == {"challenger": "1"}
    [version] = client.search_model_versions(f"name='{MODEL}'")
    assert "gate.decision" not in version.tags, version.tags

    command = run_mlops(SHORT, env)
    assert command.process.returncode == 0, command.output[-3000:]
    aliases = _as_text(aliased_versions_are_whole(client, MODEL))
    assert aliases == {"challenger": "2", "champion": "2"}
    assert client.get_model_version(MODEL, "2").tags["gate.decision"] == "promoted"


def _as_text(aliases: dict[str, str]) -> dict[str, str]:
    """A SQLite store answers alias versions as integers, a server as strings."""
    return {alias: str(version) for alias, version in aliases.items()}
