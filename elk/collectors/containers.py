"""Container metrics through the docker SDK; without a daemon: one warning, then nothing."""

from __future__ import annotations

import logging
from typing import Any

from elk import events

log = logging.getLogger(__name__)


def cpu_fraction(stats: dict[str, Any]) -> float:
    """Docker's CPU usage as a fraction of the whole machine (as `docker stats` computes it)."""
    cpu = stats.get("cpu_stats", {})
    previous = stats.get("precpu_stats", {})
    container_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - previous.get(
        "cpu_usage", {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - previous.get("system_cpu_usage", 0)
    if container_delta <= 0 or system_delta <= 0:
        return 0.0
    return float(container_delta) / float(system_delta)


def memory_usage(stats: dict[str, Any]) -> tuple[int, int]:
    """(usage without page cache, limit), as `docker stats` shows them."""
    memory = stats.get("memory_stats", {})
    usage = int(memory.get("usage", 0))
    cache = int(memory.get("stats", {}).get("inactive_file", 0))
    return max(0, usage - cache), int(memory.get("limit", 0))


class DockerCollector:
    """`container.*` and `docker.*` for every running container."""

    name = "docker"

    def __init__(self) -> None:
        self._client: Any = None
        self._warned = False

    @property
    def available(self) -> bool:
        return self._connect() is not None

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        import docker
        from docker.errors import DockerException

        try:
            client = docker.from_env(timeout=5)
            client.ping()
        except DockerException as exc:
            if not self._warned:
                log.warning("no docker daemon (%s): container metrics are skipped", exc)
                self._warned = True
            return None
        self._client = client
        return client

    def collect(self) -> list[dict[str, Any]]:
        client = self._connect()
        if client is None:
            return []
        from docker.errors import DockerException

        try:
            containers = client.containers.list()
            return [self._event(container) for container in containers]
        except DockerException as exc:
            log.warning("docker daemon stopped answering (%s)", exc)
            self._client = None
            return []

    @staticmethod
    def _event(container: Any) -> dict[str, Any]:
        stats = container.stats(stream=False)
        usage, limit = memory_usage(stats)
        image = container.image.tags[0] if container.image.tags else container.image.id
        return events.container_event(
            container_id=container.id,
            name=container.name,
            image=image,
            cpu_pct=cpu_fraction(stats),
            memory_usage=usage,
            memory_limit=limit,
        )
