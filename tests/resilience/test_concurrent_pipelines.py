"""Two `mlops pipeline` runs at once on the same stores: the default SQLite files, and a real
PostgreSQL (MLflow's backend and the CT database in one database, the Optuna study in another).

Both pairs start on empty stores, all four commands at once: the MLflow schema is created by
one process at a time (`ml.common.tracking`), and both runs of a pair tune in the same Optuna
study (same data, same objective: by design, each adds its trials, docs/training.md). To make
the gates meet for certain, the test takes each store's promotion lock (`ml.registry.gate_lock`)
once both runs are tuning, and lets go only when both say they wait for it: neither may have
recorded a decision by then. Afterwards: both exit 0; exactly one version was promoted as the
first champion, the other was compared with that champion (not promoted blindly), the
`champion` alias is on the winner, and every alias is on a version whose files are whole.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from ml.registry import CHAMPION, gate_lock
from ml.storage import study_storage
from tests.conftest import REPO_ROOT
from tests.fixtures.postgres import PostgresServer
from tests.resilience.chain_support import MODEL, Command, aliased_versions_are_whole, mlops_env
from tests.resilience.serving_load import report

pytestmark = [pytest.mark.resilience, pytest.mark.integration]

PIPELINE = ["pipeline", "--trials", "2", "--n-jobs", "1"]
WAITING = "gate: waiting for the promotion lock"


@dataclass
class Stores:
    """One set of stores two pipelines share, and the pair running on it."""

    kind: str
    env: dict[str, str]
    tracking: str
    study_storage: str
    ct_database: str
    cwd: Path
    runs: tuple[Command, Command] | None = None

    def start_pair(self) -> None:
        self.runs = (
            Command.start(PIPELINE, self.env, cwd=self.cwd),
            Command.start(PIPELINE, self.env, cwd=self.cwd),
        )

    @property
    def pair(self) -> tuple[Command, Command]:
        assert self.runs is not None
        return self.runs


@pytest.fixture
def postgres_databases(postgres_server: PostgresServer) -> Iterator[tuple[str, str]]:
    """Two new databases: MLflow's and the CT database in one, the Optuna study in the other
    (Optuna and MLflow both keep their schema revision in `alembic_version`, so Optuna refuses
    a database MLflow set up, however the runs start: docs/reliability.md)."""
    names = [f"pipelines_{secrets.token_hex(6)}", f"studies_{secrets.token_hex(6)}"]
    urls = [postgres_server.create_database(name) for name in names]
    try:
        yield urls[0], urls[1]
    finally:
        for name in names:
            postgres_server.drop_database(name)


def sqlite_stores(tmp_path: Path) -> Stores:
    var_dir = tmp_path / "sqlite" / "var"
    return Stores(
        "sqlite",
        mlops_env(var_dir),
        f"sqlite:///{var_dir / 'mlflow.db'}",
        f"sqlite:///{var_dir / 'optuna.db'}",
        f"sqlite:///{var_dir / 'ct.db'}",
        REPO_ROOT,
    )


def postgres_stores(tmp_path: Path, urls: tuple[str, str]) -> Stores:
    tracking, studies = urls
    # MLflow's database store without a server keeps artifacts in ./mlruns of the working
    # directory: the runs work in the test's own one.
    cwd = tmp_path / "postgresql"
    cwd.mkdir()
    env = mlops_env(
        cwd / "var",
        MLFLOW_TRACKING_URI=tracking,
        MLOPS_CT_DATABASE=tracking,
        MLOPS_OPTUNA_STORAGE=studies,
    )
    return Stores("postgresql", env, tracking, studies, tracking, cwd)


def test_two_pipelines_at_once_gate_one_after_the_other(
    tmp_path: Path, postgres_databases: tuple[str, str]
) -> None:
    all_stores = [sqlite_stores(tmp_path), postgres_stores(tmp_path, postgres_databases)]
    started = time.monotonic()
    for stores in all_stores:
        stores.start_pair()
    for stores in all_stores:
        for run in stores.pair:
            run.wait_for_line("stage tune started")
    marks = {"all_tuning_after_s": round(time.monotonic() - started, 1)}
    with ExitStack() as held:
        for stores in all_stores:
            held.enter_context(gate_lock(stores.ct_database, MODEL))
        for stores in all_stores:
            for run in stores.pair:
                run.wait_for_line(WAITING)
        marks["all_gates_waiting_after_s"] = round(time.monotonic() - started, 1)
        for stores in all_stores:
            client = MlflowClient(stores.tracking, stores.tracking)
            decided = [
                version.version
                for version in client.search_model_versions(f"name='{MODEL}'")
                if "gate.decision" in version.tags
            ]
            assert not decided, f"{stores.kind}: a gate decided without the lock"
    for stores in all_stores:
        codes = [run.finish() for run in stores.pair]
        time.sleep(0.1)  # the reader threads take the last lines
        assert codes == [0, 0], "\n\n".join(run.output[-3000:] for run in stores.pair)
        marks["pair_done_after_s"] = round(time.monotonic() - started, 1)
        check_one_champion_and_both_decisions(stores, marks)


def check_one_champion_and_both_decisions(stores: Stores, marks: dict[str, float]) -> None:
    client = MlflowClient(stores.tracking, stores.tracking)
    versions = {
        str(version.version): version.tags
        for version in client.search_model_versions(f"name='{MODEL}'")
    }
    assert sorted(versions) == ["1", "2"], versions
    [first] = [v for v, tags in versions.items() if tags["gate.reason"] == "no champion yet"]
    [second] = set(versions) - {first}
    assert versions[first]["gate.decision"] == "promoted"
    # The second gate compared its challenger with the first one's champion.
    assert versions[second]["gate.champion_version"] == first, versions[second]
    assert "beat" in versions[second]["gate.reason"], versions[second]
    winner = second if versions[second]["gate.decision"] == "promoted" else first
    aliases = aliased_versions_are_whole(client, MODEL)
    assert str(aliases[CHAMPION]) == winner, aliases

    storage = study_storage(stores.study_storage)
    study_names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert len(study_names) == 1, study_names  # both runs tuned in one study
    study = optuna.load_study(study_name=study_names[0], storage=storage)
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4, states

    outputs = "\n".join(run.output for run in stores.pair)
    assert "Traceback" not in outputs, outputs[-3000:]
    report(
        "two_pipelines_at_once",
        stores=stores.kind,
        exit_codes=[0, 0],
        decisions={v: versions[v]["gate.decision"] for v in ("1", "2")},
        first_champion=first,
        second_compared_with=versions[second]["gate.champion_version"],
        champion=winner,
        study_trials_complete=4,
        database_is_locked_lines=outputs.count("database is locked"),
        **marks,
    )
