"""SIGTERM during tuning: raised only inside the objective, so no trial stays RUNNING.

A forked child (so the signal never reaches pytest) runs one Optuna trial on a SQLite storage
the way `ml.tuning` does, and sends itself SIGTERM from the sampler, after `ask` has created
the trial and before the objective starts: the window a pipeline killed in tuning hit in CI
(a trial left RUNNING).
"""

import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from ml.common.signals import Terminated, sigterm_allowed, sigterm_deferred, sigterm_raises
from ml.tuning import optimize_interruptibly

FORK = multiprocessing.get_context("fork")


class TermInAsk(optuna.samplers.RandomSampler):
    """Proposes like RandomSampler, but SIGTERMs its own process as the trial starts."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        os.kill(os.getpid(), signal.SIGTERM)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _in_child(work: Callable[[], None]) -> int:
    """Run `work` in a forked child under `sigterm_raises`: exit 143 on `Terminated`."""

    def child() -> None:
        with sigterm_raises():
            try:
                work()
            except Terminated:
                os._exit(143)
            os._exit(0)

    process = FORK.Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode


@pytest.mark.parametrize("deferred, state", [(True, "FAIL"), (False, "RUNNING")])
def test_a_sigterm_while_the_trial_starts_fails_it_only_when_deferred(
    tmp_path: Path, deferred: bool, state: str
) -> None:
    """Through `optimize_interruptibly` (as `ml.tuning` runs trials), the trial is FAIL;
    without it the same SIGTERM leaves it RUNNING: the control shows the test tells them apart."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url)

    def one_trial() -> None:
        study = optuna.load_study(study_name="s", storage=url, sampler=TermInAsk())
        if not deferred:
            study.optimize(_objective, n_trials=1)
            return
        optimize_interruptibly(study, _objective, n_trials=1)

    assert _in_child(one_trial) == 143
    [trial] = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state.name == state


def test_a_deferred_sigterm_is_raised_when_the_allowed_block_starts() -> None:
    def work() -> None:
        with sigterm_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            with sigterm_allowed():
                os._exit(1)  # not reached: raised on entry
        os._exit(2)

    assert _in_child(work) == 143


def test_a_deferred_sigterm_is_raised_when_the_deferred_block_ends() -> None:
    reached = FORK.Value("i", 0)

    def work() -> None:
        with sigterm_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.value = 1  # the block runs on to its end
        os._exit(2)  # not reached: raised as the block ends

    assert _in_child(work) == 143
    assert reached.value == 1
