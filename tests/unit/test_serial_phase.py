"""`make test`'s split (`--serial only|skip`, tests/conftest.py): its two runs take every test
once, the serial ones alone, and a -m in PYTEST_ARGS narrows a run instead of replacing the
split (with `-m serial`, a user's -m made both runs take every test)."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

# A module as the suite has them: a serial test beside others, every one with another marker.
SUITE = """
import pytest

pytestmark = pytest.mark.resilience

@pytest.mark.serial
def test_flood(): pass

def test_limit(): pass

def test_restart(): pass
"""
# The split itself, from the suite's conftest (imported, not copied).
CONFTEST = "from tests.conftest import pytest_addoption, pytest_collection_modifyitems\n"
MARKERS = "[pytest]\nmarkers =\n    serial: x\n    resilience: x\n"


def _collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_inprocess("--collect-only", "-q", "--strict-markers", *args)
    return {line.split("::")[1] for line in result.outlines if "::" in line}


def test_the_two_runs_take_every_test_once_and_a_marker_expression_keeps_the_split(
    pytester: pytest.Pytester,
) -> None:
    every = _collected(pytester)
    alone = _collected(pytester, "--serial=only", "-m", "resilience")
    parallel = _collected(pytester, "--serial=skip")
    assert every == {"test_flood", "test_limit", "test_restart"}
    assert alone == {"test_flood"}
    assert parallel == {"test_limit", "test_restart"}
