"""Collectors turn a source (psutil, the docker daemon, Ray's Prometheus endpoint, a training
run) into ECS events. Each has `collect() -> list[dict]` and never raises for an unavailable
source: it warns once and returns nothing until the source is back."""

from __future__ import annotations

from typing import Any, Protocol


class Collector(Protocol):
    """What `mlops monitor run` polls every interval."""

    name: str

    def collect(self) -> list[dict[str, Any]]:
        """The events of one sample; empty when the source is unavailable."""
