"""ml.common.values.plain: what metadata and ECS events store, one rule for ml and elk."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from elk.sinks import dumps
from ml.common.values import plain, some


@pytest.mark.parametrize(
    ("given", "expected", "kind"),
    [
        (np.int64(3), 3, int),
        (np.float32(0.5), 0.5, float),
        (np.bool_(True), True, bool),
        (np.str_("yes"), "yes", str),
        (7, 7, int),
        ("no", "no", str),
    ],
)
def test_numpy_scalars_become_python_ones(given, expected, kind) -> None:
    value = plain(given)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize("nan", [float("nan"), np.float64("nan"), np.float32("nan"), math.nan])
def test_nan_becomes_none(nan) -> None:
    assert plain(nan) is None


@pytest.mark.parametrize("infinity", [math.inf, -math.inf, np.float64("inf"), np.float32("-inf")])
def test_infinity_becomes_none_as_telemetry_writes_it(infinity) -> None:
    """JSON has no infinity: Python's json would write `Infinity` (refused by strict parsers
    and Elasticsearch) where telemetry's NDJSON writes null. One answer for every consumer."""
    assert plain(infinity) is None
    assert orjson.loads(dumps({"value": infinity})) == {"value": None}  # elk.sinks' NDJSON


def test_none_and_large_finite_values_pass_through() -> None:
    assert plain(None) is None
    assert plain(np.float64(1e308)) == 1e308


def test_some_shows_a_few_values_and_counts_the_rest() -> None:
    assert some([]) == ""
    assert some(["a", "b"]) == "'a', 'b'"
    assert some(list(range(10)), show=str) == "0, 1, 2 and 7 more"
    assert some([np.float64(0.5)] * 4, limit=1) == "0.5 and 3 more"
    long = some(["x" * 1000])
    assert len(long) == 40 and long.endswith("...")
