"""SIGTERM in a trial worker: taken only inside the objective, so no trial stays RUNNING.

A forked child runs one Optuna trial on a SQLite storage the way `ml.tuning._trial_worker`
does, and sends itself SIGTERM from the sampler, after `ask` has created the trial and before
the objective starts: the window a pipeline killed in tuning hit in CI (a trial left RUNNING).
"""

import multiprocessing
import os
import signal
from pathlib import Path

import optuna
import pytest

from ml.common.signals import Terminated, defer_sigterm, sigterm_allowed, sigterm_raises

FORK = multiprocessing.get_context("fork")


class TermInAsk(optuna.samplers.RandomSampler):
    """Proposes like RandomSampler, but SIGTERMs its own process as the trial starts."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        os.kill(os.getpid(), signal.SIGTERM)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _one_trial(url: str, deferred: bool) -> None:
    with sigterm_raises():
        objective = _objective
        if deferred:
            defer_sigterm()

            def objective(trial: optuna.Trial) -> float:
                with sigterm_allowed():
                    return _objective(trial)

        study = optuna.load_study(study_name="s", storage=url, sampler=TermInAsk())
        try:
            study.optimize(objective, n_trials=1)
        except Terminated:
            os._exit(143)
        os._exit(0)  # the signal never came: the test fails on the exit code


@pytest.mark.parametrize("deferred, state", [(True, "FAIL"), (False, "RUNNING")])
def test_a_sigterm_while_the_trial_starts_fails_it_only_when_deferred(
    tmp_path: Path, deferred: bool, state: str
) -> None:
    """Deferred (as the workers run), the trial is FAIL; without it, the same SIGTERM leaves
    it RUNNING: the control shows the test can tell the two apart."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url)
    child = FORK.Process(target=_one_trial, args=(url, deferred))
    child.start()
    child.join(60)
    assert child.exitcode == 143
    [trial] = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state.name == state


def test_a_deferred_sigterm_waits_for_the_allowed_block() -> None:
    def child() -> None:
        with sigterm_raises():
            defer_sigterm()
            os.kill(os.getpid(), signal.SIGTERM)
            survived = True  # the signal is pending, not delivered
            try:
                with sigterm_allowed():
                    survived = False
                    os._exit(1)  # not reached: delivered on entry
            except Terminated:
                os._exit(143 if survived else 2)

    process = FORK.Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 143
