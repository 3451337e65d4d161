"""Values as JSON and YAML can hold them: what metadata, events and responses are made of."""

from __future__ import annotations

import math
from typing import Any


def plain(value: Any) -> Any:
    """A numpy scalar as the Python one (`.item()`); NaN as None (JSON has no NaN); anything
    else unchanged."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
