"""The AutoML benchmark's contract with FLAML, without a race: the estimator names the runner
asks for exist in the FLAML it runs, that FLAML shares our lock's scikit-learn/numpy/pandas, and
every command the race builds parses with the runner's own arguments.

When the FLAML venv exists (`make flaml`; scripts/flaml.sh) the names are read from its
installed FLAML; otherwise from FLAML 2.8's documented estimator list (the version
scripts/flaml.sh pins), and the shared libraries from scripts/flaml.sh's pins, so the checks
still run on a machine that never built the venv.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess  # nosec B404
import sys
from pathlib import Path

import pytest

from benchmarks import flaml_runner
from benchmarks.automl import DATASETS, Job, command
from benchmarks.automl_report import CONTENDERS, OURS

REPO = Path(__file__).resolve().parents[2]
FLAML_SH = REPO / "scripts" / "flaml.sh"
# FLAML 2.8's built-in estimators for tabular tasks (docs: AutoML "estimator_list"; its
# generic_task.py), less the Spark and transformer ones.
DOCUMENTED = {
    "classification": {
        "lgbm",
        "xgboost",
        "xgb_limitdepth",
        "rf",
        "extra_tree",
        "histgb",
        "lrl1",
        "lrl2",
        "catboost",
        "kneighbor",
        "sgd",
        "svc",
    },
    "regression": {
        "lgbm",
        "xgboost",
        "xgb_limitdepth",
        "rf",
        "extra_tree",
        "histgb",
        "catboost",
        "kneighbor",
        "sgd",
        "enet",
        "lassolars",
    },
}


def flaml_python() -> Path | None:
    found = subprocess.run(  # nosec B603
        [str(FLAML_SH), "path"], capture_output=True, text=True, check=False
    )
    return Path(found.stdout.strip()) / "python" if found.returncode == 0 else None


@functools.cache  # one probe per session: importing FLAML takes seconds
def installed() -> dict[str, object] | None:
    """The FLAML venv's estimator names per task and its library versions, if it exists."""
    python = flaml_python()
    if python is None:
        return None
    probe = (
        "import json, flaml, sklearn, numpy, pandas\n"
        "from flaml.automl.task.generic_task import GenericTask\n"
        "print(json.dumps({'estimators': {t: sorted(GenericTask(t).estimators) for t in "
        "('classification', 'regression')}, 'versions': {'flaml': flaml.__version__, "
        "'scikit-learn': sklearn.__version__, 'numpy': numpy.__version__, "
        "'pandas': pandas.__version__}}))"
    )
    done = subprocess.run(  # nosec B603
        [str(python), "-c", probe], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def pinned_version() -> str:
    match = re.search(r'^readonly VERSION="([^"]+)"', FLAML_SH.read_text(), re.MULTILINE)
    assert match, "scripts/flaml.sh: no VERSION"
    return match.group(1)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_our_families_are_flaml_estimators(task: str) -> None:
    found = installed()
    if found is None:
        assert pinned_version().startswith("2.8."), "DOCUMENTED lists FLAML 2.8's names"
        names = DOCUMENTED[task]
    else:
        names = set(found["estimators"][task])  # type: ignore[index]
    ours = set(flaml_runner.OUR_FAMILIES[task])
    assert ours <= names, f"not FLAML {task} estimators: {sorted(ours - names)}"
    # restricted means restricted: FLAML's own boosters stay out
    assert not ours & {"lgbm", "xgboost", "xgb_limitdepth", "extra_tree", "catboost"}


SCORING_LIBRARIES = ("scikit-learn", "numpy", "pandas")


def test_the_flaml_venv_shares_the_locks_scoring_libraries() -> None:
    """What scripts/flaml.sh installs takes the lock's versions (on any machine), and a venv
    already built from it holds them (where `make flaml` ran)."""
    pins = re.search(r"^PINS=\((.*?)\)$", FLAML_SH.read_text(), re.MULTILINE | re.DOTALL)
    assert pins, "scripts/flaml.sh: no PINS"
    for name in SCORING_LIBRARIES:
        assert f'"$(locked {name})"' in pins.group(1), f"scripts/flaml.sh does not lock {name}"
    found = installed()
    if found is None:
        return  # no venv built here: nothing installed to compare
    lock = dict(
        line.split("==", 1)
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    versions = found["versions"]
    assert versions["flaml"] == pinned_version()  # type: ignore[index]
    for name in SCORING_LIBRARIES:
        assert versions[name] == lock[name].split()[0], name  # type: ignore[index]


@pytest.mark.parametrize("contender", CONTENDERS)
def test_every_command_the_race_builds_parses(contender: str, tmp_path: Path) -> None:
    for dataset in DATASETS:
        job = Job(dataset, 2, contender, tmp_path)
        argv = command(job, Path("/flaml/bin/python"), 60.0, 3)
        if contender == OURS:
            assert argv[:3] == [sys.executable, str(REPO / "benchmarks" / "automl.py"), "--side"]
            continue
        args = flaml_runner.build_parser().parse_args(argv[2:])
        assert (args.task, args.target, args.budget, args.folds) == (
            dataset.task,
            dataset.target,
            60.0,
            3,
        )
        listed = flaml_runner.estimator_list(args.estimators, args.task)
        assert listed == (
            "auto" if "all" in contender else list(flaml_runner.OUR_FAMILIES[args.task])
        )
