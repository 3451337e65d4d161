"""Values as JSON and YAML can hold them: what metadata, events and responses are made of."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def plain(value: Any) -> Any:
    """A numpy scalar as the Python one (`.item()`); NaN and +-infinity as None; anything else
    unchanged.

    JSON has neither NaN nor infinity (Python's json would write `Infinity`, which strict
    parsers and Elasticsearch refuse), and telemetry's NDJSON (orjson, `elk.sinks.dumps`)
    writes both as null: so every consumer gets null, a missing value, whichever way a value
    was written."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def some(values: Sequence[Any], limit: int = 3, show: Callable[[Any], str] | None = None) -> str:
    """The first `limit` of `values` (`show`n, by default a shortened repr) and how many more
    there are: an error message stays one short line whatever a column holds."""
    shown = ", ".join((show or short_repr)(value) for value in values[:limit])
    more = len(values) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def short_repr(value: Any, width: int = 40) -> str:
    """`repr` of the plain value, cut to `width` characters (a label can be a paragraph)."""
    text = repr(plain(value))
    return text if len(text) <= width else text[: width - 3] + "..."
