"""ml.tuning: conditional search space, real pruning, RDB storage shared across processes."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from ml.config import Settings
from ml.data import load_dataset, split, validate
from ml.families import family
from ml.storage import study_storage
from ml.tuning import (
    FoldGapPruner,
    Objective,
    create_study,
    enqueue_defaults,
    suggest_params,
    trials_read_at_trial_start,
    tune,
)
from tests.unit.test_data import mixed_frame
from tests.unit.test_features import PARAMS


@pytest.fixture(scope="module")
def demo_split():
    dataset = load_dataset("demo", None)
    return dataset, split(dataset, 0.2, 42)


def test_search_space_is_conditional_on_family() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[str]] = {}
    for _ in range(30):
        trial = study.ask()
        params = suggest_params(trial, ["logreg", "random_forest", "hist_gb"])
        seen.setdefault(params["family"], set()).update(params)
        study.tell(trial, 0.5)
    assert seen["logreg"] == {"family", "C", "class_weight"}
    assert "n_estimators" in seen["random_forest"] and "C" not in seen["random_forest"]
    assert "learning_rate" in seen["hist_gb"] and "max_depth" not in seen["hist_gb"]


def test_pruner_stops_a_clearly_worse_trial(tmp_path, demo_split) -> None:
    """Five good trials set the bar; a crippled forest is pruned after its first fold."""
    dataset, data_split = demo_split
    settings = Settings(var_dir=tmp_path, families=["logreg", "random_forest"])
    study = create_study(settings, "prune-check")
    for _ in range(5):
        study.enqueue_trial({"family": "logreg", "C": 1.0})
    study.enqueue_trial(
        {
            "family": "random_forest",
            "n_estimators": 50,
            "max_depth": 2,
            "min_samples_leaf": 10,
            "max_features": "log2",
        }
    )
    study.optimize(
        Objective(data_split, dataset.feature_types, settings, tracking=None), n_trials=6
    )
    states = [trial.state for trial in study.trials]
    assert states[:5] == [optuna.trial.TrialState.COMPLETE] * 5
    assert states[5] == optuna.trial.TrialState.PRUNED
    assert len(study.trials[5].intermediate_values) == 1  # stopped after fold 1 of 3


def test_study_in_rdb_storage_is_resumed_by_name(tmp_path, demo_split) -> None:
    dataset, data_split = demo_split
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=2)
    first = tune(data_split, dataset.feature_types, settings, "shared", tracker=None)
    second = tune(data_split, dataset.feature_types, settings, "shared", tracker=None)
    assert first.complete + first.pruned == 2
    assert second.complete + second.pruned == 4  # the second run joined the same study
    loaded = optuna.load_study(study_name="shared", storage=study_storage(settings.optuna_storage))
    assert len(loaded.trials) == 4
    assert second.best_value == pytest.approx(loaded.best_value)


def test_sqlite_study_storage_uses_wal(tmp_path) -> None:
    """Optuna's many small transactions per trial must not each wait for an fsync."""
    import sqlite3

    settings = Settings(var_dir=tmp_path, optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study = create_study(settings, "wal")
    study.enqueue_trial({"family": "logreg", "C": 1.0})
    with sqlite3.connect(tmp_path / "optuna.db") as connection:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_trial_tracker_writes_nested_runs_and_counts_its_cpu(tmp_path, demo_split) -> None:
    """Real MLflow SQLite store: every trial becomes a child run; the worker's CPU is counted."""
    from mlflow.tracking import MlflowClient

    from ml.tracking import TrialTracker

    dataset, data_split = demo_split
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id).info.run_id
    tracker = TrialTracker(client, experiment_id, parent, "roc_auc")
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=2)
    tune(data_split, dataset.feature_types, settings, "tracked", tracker)  # closes the tracker
    runs = client.search_runs([experiment_id], "tags.`mlops.kind` = 'trial'")
    children = [run for run in runs if run.data.tags["mlflow.parentRunId"] == parent]
    assert len(children) == 2
    assert all(len(run.data.metrics) >= 2 for run in children)  # fold scores, duration
    assert tracker.write_cpu_s > 0
    assert tracker.written == 2


def _finished(fold_scores: list[float]) -> optuna.trial.FrozenTrial:
    """A complete trial with these fold scores, reported one per fold like Objective."""
    return optuna.trial.create_trial(
        params={},
        distributions={},
        value=sum(fold_scores) / len(fold_scores),
        intermediate_values=dict(enumerate(fold_scores)),
    )


@pytest.mark.parametrize(
    ("fold_scores", "first_fold", "pruned"),
    [
        # Folds that agree to 0.0004 (large data): 0.001 behind the best is clearly behind.
        ([0.9931, 0.9933, 0.9925], 0.9921, True),
        # Folds that disagree by 0.005 (small data): the same gap is within one fold's noise.
        ([0.9970, 0.9994, 0.9901], 0.9960, False),
        # Behind by more than that noise: stopped on small data too.
        ([0.9970, 0.9994, 0.9901], 0.9800, True),
    ],
)
def test_fold_gap_pruner_bar_follows_the_fold_noise(fold_scores, first_fold, pruned) -> None:
    study = optuna.create_study(direction="maximize", pruner=FoldGapPruner())
    for offset in (0.0, -0.002):  # the best trial and a weaker one
        study.add_trial(_finished([score + offset for score in fold_scores]))
    trial = study.ask()
    trial.report(first_fold, 0)
    assert trial.should_prune() is pruned


def test_fold_gap_pruner_compares_running_means() -> None:
    """Fold scores are reported one by one; the bar is on their running mean."""
    study = optuna.create_study(direction="maximize", pruner=FoldGapPruner())
    for offset in (0.0, -0.002):
        study.add_trial(_finished([s + offset for s in (0.9931, 0.9933, 0.9925)]))
    trial = study.ask()
    trial.report(0.9940, 0)  # ahead of the best's first fold
    assert not trial.should_prune()
    trial.report(0.9900, 1)  # 0.9920 after two folds, 0.0012 behind the best's 0.9932
    assert trial.should_prune()


def test_fold_gap_pruner_reads_the_bar_once_per_trial() -> None:
    """A trial keeps the bar of its first check; a better trial completing meanwhile raises
    the bar from the next trial on."""
    study = optuna.create_study(direction="maximize", pruner=FoldGapPruner())
    for offset in (0.0, -0.002):
        study.add_trial(_finished([s + offset for s in (0.9931, 0.9933, 0.9925)]))
    running = study.ask()
    running.report(0.9929, 0)
    assert not running.should_prune()  # 0.0002 behind the best; folds spread 0.0004
    study.add_trial(_finished([0.9990, 0.9992, 0.9988]))
    running.report(0.9929, 1)
    assert not running.should_prune()  # still measured against the bar it started with
    following = study.ask()
    following.report(0.9929, 0)
    assert following.should_prune()  # 0.0061 behind the new best


def test_the_private_trial_cache_adapter_still_reads_no_storage_inside_a_trial() -> None:
    """`trials_read_at_trial_start` uses Optuna's private trial cache to spare a storage read
    per trial. An Optuna upgrade that renames it, or whose cache is no longer filled by the
    sampler, fails here: the adapter would then read the storage itself."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for offset in (0.0, -0.002):
        study.add_trial(_finished([s + offset for s in (0.9931, 0.9933, 0.9925)]))
    storage = study._storage  # pylint: disable=protected-access
    reads: list[int] = []
    read_all = storage.get_all_trials

    def counted(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        reads.append(1)
        return read_all(*args, **kwargs)

    storage.get_all_trials = counted  # type: ignore[method-assign]
    seen: list[list[int]] = []

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)  # the sampler reads the trials here
        before = len(reads)
        complete = trials_read_at_trial_start(study, (optuna.trial.TrialState.COMPLETE,))
        assert len(reads) == before, "Optuna's trial cache was empty: a storage read"
        seen.append([done.number for done in complete])
        return 0.5

    study.optimize(objective, n_trials=2)
    assert seen == [[0, 1], [0, 1, 2]]  # each trial: the complete ones when it started


def test_fold_gap_pruner_minimizing_prunes_the_higher_loss() -> None:
    study = optuna.create_study(direction="minimize", pruner=FoldGapPruner())
    for offset in (0.0, 0.01):
        study.add_trial(_finished([0.100 + offset, 0.104 + offset, 0.098 + offset]))
    close, far = study.ask(), study.ask()
    close.report(0.101, 0)
    far.report(0.150, 0)
    assert not close.should_prune()
    assert far.should_prune()


def test_fold_gap_pruner_waits_for_two_complete_trials() -> None:
    study = optuna.create_study(direction="maximize", pruner=FoldGapPruner())
    study.add_trial(_finished([0.99, 0.99, 0.98]))
    trial = study.ask()
    trial.report(0.5, 0)
    assert not trial.should_prune()


def test_cheap_defaults_run_first_once_and_only_for_configured_families(tmp_path) -> None:
    """Every configured family's scikit-learn defaults are queued first, once: a resumed
    study (the same storage, the defaults already tried) queues nothing again."""
    settings = Settings(var_dir=tmp_path, families=["logreg", "random_forest"])
    study = create_study(settings, "defaults")
    enqueue_defaults(study, list(settings.families))
    enqueue_defaults(study, list(settings.families))  # a second run before any trial ran
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(queued) == 2  # hist_gb is not configured
    for name in ("logreg", "random_forest"):  # in the table's order
        trial = study.ask()
        assert suggest_params(trial, list(settings.families)) == {
            "family": name,
            **(family(name).cheap_defaults or {}),
        }
        assert trial.user_attrs == {"start": "scikit-learn default"}
        study.tell(trial, 0.9)
    resumed = create_study(settings, "defaults")
    enqueue_defaults(resumed, list(settings.families))
    assert resumed.get_trials(states=(optuna.trial.TrialState.WAITING,)) == []
    assert len(resumed.trials) == 2


def test_parallel_trials_run_in_worker_processes_with_one_native_thread_each(
    tmp_path, demo_split, monkeypatch
) -> None:
    """Parallel trials run in forked processes, each fit with one OpenMP thread (GNU OpenMP
    hangs in a forked child that asks for more once its parent has used a team) and one
    BLAS thread; the parent's own limits are untouched afterwards."""
    import json
    import os

    from threadpoolctl import threadpool_info

    import ml.tuning

    def threads(api: str) -> list[int]:
        return sorted(
            {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == api}
        )

    dataset, data_split = demo_split
    seen = tmp_path / "seen.jsonl"
    build = ml.tuning.build_estimator

    def build_and_record(*args, **kwargs):  # runs where the fits run: in a worker
        with seen.open("a", encoding="utf-8") as out:
            out.write(json.dumps([os.getpid(), threads("openmp"), threads("blas")]) + "\n")
        return build(*args, **kwargs)

    monkeypatch.setattr(ml.tuning, "build_estimator", build_and_record)
    blas_before = threads("blas")
    # The parent runs an OpenMP team first, as the CLI's second study or a test run would.
    build(PARAMS["hist_gb"], 0).fit(data_split.X_train.iloc[:, :5], data_split.y_train)
    settings = Settings(var_dir=tmp_path, families=["hist_gb"], trials=4, n_jobs=2)
    tune(data_split, dataset.feature_types, settings, "threads", None)
    fits = [json.loads(line) for line in seen.read_text(encoding="utf-8").splitlines()]
    assert len(fits) >= 4 * settings.cv_folds - 2  # every fold of every trial (some pruned)
    assert os.getpid() not in {pid for pid, _, _ in fits}
    assert {tuple(omp) for _, omp, _ in fits} == {(1,)}
    assert {tuple(blas) for _, _, blas in fits} == {(1,)}
    assert threads("blas") == blas_before


def test_parallel_study_runs_exactly_its_trials_and_reports_each_to_the_callbacks(
    tmp_path, demo_split
) -> None:
    """Workers claim trials from one count; the parent's callbacks see every finished trial
    once, as the storage holds it; every worker's trial reaches the one MLflow writer."""
    from mlflow.tracking import MlflowClient

    from ml.tracking import TrialTracker

    dataset, data_split = demo_split
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("p", (tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id).info.run_id
    tracker = TrialTracker(client, experiment_id, parent, "roc_auc")
    reported: list[optuna.trial.FrozenTrial] = []
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=7, n_jobs=2)
    result = tune(
        data_split,
        dataset.feature_types,
        settings,
        "parallel",
        tracker,
        [lambda study, trial: reported.append(trial)],
    )
    assert sorted(trial.number for trial in reported) == list(range(7))
    assert result.complete + result.pruned + result.failed == 7
    study = optuna.load_study(study_name="parallel", storage=study_storage(settings.optuna_storage))
    assert len(study.trials) == 7
    stored = {trial.number: (trial.state, trial.value, trial.params) for trial in study.trials}
    assert {trial.number: (trial.state, trial.value, trial.params) for trial in reported} == stored
    assert all(trial.state.is_finished() for trial in reported)
    runs = client.search_runs([experiment_id], "tags.`mlops.kind` = 'trial'")
    assert sorted(int(run.data.tags["optuna.trial"]) for run in runs) == list(range(7))
    assert tracker.written == 7


def test_a_failing_trial_worker_stops_the_study_with_its_error(
    tmp_path, demo_split, monkeypatch
) -> None:
    """An error that is not a bad configuration (not ValueError/ArithmeticError) must not
    leave the parent waiting: it is raised there, with the worker's traceback."""
    import ml.tuning

    def broken(*_args, **_kwargs):
        raise TypeError("a bug, not a bad configuration")

    monkeypatch.setattr(ml.tuning, "build_estimator", broken)
    dataset, data_split = demo_split
    settings = Settings(var_dir=tmp_path, families=["logreg"], trials=4, n_jobs=2)
    with pytest.raises(
        RuntimeError, match=r"trial worker failed: trial-worker-\d: TypeError: a bug"
    ):
        tune(data_split, dataset.feature_types, settings, "broken", None)


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_fold_preprocessing_fitted_once_gives_the_full_pipelines_scores(
    tmp_path, family: str
) -> None:
    """Trials fit only the classifier on folds preprocessed once; the scores must be those of
    the whole pipeline fitted per fold (mixed columns, gaps, one-hot, string target)."""
    from sklearn.model_selection import StratifiedKFold

    from ml.evaluation import score
    from ml.features import build_pipeline

    dataset = validate(mixed_frame(), "churned", source="frame")
    data_split = split(dataset, 0.2, 42)
    settings = Settings(var_dir=tmp_path, families=[family], cv_folds=3)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS[family])
    study.optimize(
        Objective(data_split, dataset.feature_types, settings, tracking=None), n_trials=1
    )
    X, y = data_split.X_train, data_split.y_train  # noqa: N806
    expected = []
    folds = StratifiedKFold(3, shuffle=True, random_state=settings.seed)
    for train, valid in folds.split(X, y):
        pipeline = build_pipeline(PARAMS[family], dataset.feature_types, settings.seed)
        pipeline.fit(X.iloc[train], y.iloc[train])
        expected.append(score("roc_auc", pipeline, X.iloc[valid], y.iloc[valid]))
    assert list(study.trials[0].intermediate_values.values()) == expected


def test_sqlite_study_reads_run_beside_a_writer(tmp_path) -> None:
    """Only writes take SQLite's write lock up front: the sampler's and the pruner's reads
    (the heaviest queries) must not queue behind another process's write. With every
    transaction immediate, two worker processes ran no faster than one."""
    import sqlite3

    from ml.storage import study_storage

    path = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=study_storage(f"sqlite:///{path}"))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        reader = optuna.load_study(study_name="s", storage=study_storage(f"sqlite:///{path}"))
        assert [trial.value for trial in reader.trials] == [1.0]
        assert reader.best_value == 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


QUEUED = 60


def test_parallel_workers_start_each_queued_trial_once(tmp_path) -> None:
    """SQLite ignores SELECT ... FOR UPDATE: without BEGIN IMMEDIATE two workers started the
    same queued trial and `optimize` crashed (optuna/optuna#4002; 5 of 5 runs of this test)."""
    from ml.storage import study_storage

    study = optuna.create_study(storage=study_storage(f"sqlite:///{tmp_path / 'queue.db'}"))
    for value in range(QUEUED):
        study.enqueue_trial({"x": float(value)})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1000), n_trials=QUEUED, n_jobs=4)
    started = sorted(trial.params["x"] for trial in study.trials)
    assert started == [float(value) for value in range(QUEUED)]


def test_a_family_that_does_not_scale_is_tuned_on_its_own_unscaled_folds(
    tmp_path, monkeypatch
) -> None:
    """Folds are prepared once per preprocessing the configured families ask for, and each
    trial is scored on its family's: the scores of that family's whole pipeline."""
    import dataclasses

    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    import ml.families
    from ml.evaluation import score
    from ml.features import build_pipeline

    unscaled = dataclasses.replace(family("random_forest"), scale_numeric=False)
    monkeypatch.setattr(
        ml.families, "FAMILIES", {**ml.families.FAMILIES, "random_forest": unscaled}
    )
    dataset = validate(mixed_frame(), "churned", source="frame")
    data_split = split(dataset, 0.2, 42)
    settings = Settings(var_dir=tmp_path, families=["logreg", "random_forest"], cv_folds=3)
    objective = Objective(data_split, dataset.feature_types, settings, tracking=None)
    assert set(objective.folds) == {True, False}
    assert not np.allclose(objective.folds[True][0].X_train, objective.folds[False][0].X_train)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PARAMS["random_forest"])
    study.optimize(objective, n_trials=1)
    X, y = data_split.X_train, data_split.y_train  # noqa: N806
    expected = []
    folds = StratifiedKFold(3, shuffle=True, random_state=settings.seed)
    for train, valid in folds.split(X, y):
        pipeline = build_pipeline(PARAMS["random_forest"], dataset.feature_types, settings.seed)
        pipeline.fit(X.iloc[train], y.iloc[train])
        expected.append(score("roc_auc", pipeline, X.iloc[valid], y.iloc[valid]))
    assert list(study.trials[0].intermediate_values.values()) == expected


# RDBStorage's methods that only read, or run inside a write's own transaction.
RDB_READS = {
    "_build_frozen_trial_from_trial_model",
    "_create_unique_study_name",
    "_fill_storage_url_template",
    "_get_best_trial_id",
    "_get_prepared_new_trial",
    "_get_stale_trial_ids",
    "_get_trials",
    "_set_default_engine_kwargs_for_mysql",
    "_set_trial_attr_without_commit",
    "_set_trial_intermediate_value_without_commit",
    "_set_trial_param_without_commit",
    "_set_trial_value_without_commit",
    "get_all_studies",
    "get_all_trials",
    "get_all_versions",
    "get_best_trial",
    "get_current_version",
    "get_head_version",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "get_study_directions",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_system_attrs",
    "get_study_user_attrs",
    "get_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_param",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "remove_session",
}


def test_every_rdb_storage_method_is_known_as_a_read_or_a_write() -> None:
    """`SQLiteStudyStorage` wraps Optuna's writing methods, private ones included, by name. An
    Optuna upgrade that adds, renames or removes one fails here, loudly: a write it does not
    wrap would begin deferred and could start a queued trial twice (optuna/optuna#4002)."""
    from ml.storage import WRITES

    methods = {
        name
        for name, value in vars(optuna.storages.RDBStorage).items()
        if callable(value) and not name.startswith("__")
    }
    assert methods == RDB_READS | set(WRITES), (
        f"RDBStorage changed: new {sorted(methods - RDB_READS - set(WRITES))}, "
        f"gone {sorted((RDB_READS | set(WRITES)) - methods)}; classify them in ml/storage.py"
    )
