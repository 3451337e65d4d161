"""Host metrics via psutil, Metricbeat `system` module names; our processes by command line."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import psutil

from elk import events

log = logging.getLogger(__name__)

# Mounts that are not disks: they would only add noise to the filesystem panel.
PSEUDO_FILESYSTEMS = frozenset(
    {"tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup", "cgroup2", "nsfs"}
)
PROCESS_RESCAN_S = 10.0


def process_role(cmdline: str) -> str:
    """What one of our processes does, from its command line."""
    text = cmdline.lower()
    if "mlflow" in text:
        return "tracking"
    if "monitor" in text:
        return "monitor"
    if any(word in text for word in ("pipeline", "train", "optuna")):
        return "training"
    return "serving"


class HostCollector:
    """CPU, load, memory, filesystems, network interfaces, and our serving/training processes."""

    name = "host"

    def __init__(self, process_words: Sequence[str] = ("ray", "serve", "mlops", "mlflow")):
        self.process_words = tuple(word.lower() for word in process_words)
        self.cores = psutil.cpu_count() or 1
        self._processes: dict[int, psutil.Process] = {}
        self._scanned_at = 0.0
        psutil.cpu_times_percent(interval=None)  # prime: the first call has no baseline

    def collect(self) -> list[dict[str, Any]]:
        collected = [self._cpu(), self._load(), self._memory()]
        collected += self._filesystems()
        collected += self._network()
        collected += self._our_processes()
        return collected

    def _cpu(self) -> dict[str, Any]:
        times = psutil.cpu_times_percent(interval=None)
        busy = max(0.0, 100.0 - times.idle - getattr(times, "iowait", 0.0))
        return events.cpu_event(
            total_pct=busy / 100,
            user_pct=times.user / 100,
            system_pct=times.system / 100,
            cores=self.cores,
        )

    def _load(self) -> dict[str, Any]:
        load1, load5, load15 = os.getloadavg()
        return events.load_event(load1=load1, load5=load5, load15=load15, cores=self.cores)

    @staticmethod
    def _memory() -> dict[str, Any]:
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return events.memory_event(
            total=memory.total,
            used=memory.used,
            available=memory.available,
            swap_used_pct=swap.percent / 100,
        )

    @staticmethod
    def _filesystems() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        seen_devices: set[str] = set()
        for partition in psutil.disk_partitions(all=False):
            if partition.fstype in PSEUDO_FILESYSTEMS or partition.device in seen_devices:
                continue
            seen_devices.add(partition.device)
            try:
                usage = psutil.disk_usage(partition.mountpoint)
            except OSError:
                continue
            found.append(
                events.filesystem_event(
                    mount_point=partition.mountpoint,
                    device=partition.device,
                    fs_type=partition.fstype,
                    total=usage.total,
                    used=usage.used,
                    free=usage.free,
                )
            )
        return found

    @staticmethod
    def _network() -> list[dict[str, Any]]:
        return [
            events.network_event(
                interface=name,
                in_bytes=c.bytes_recv,
                out_bytes=c.bytes_sent,
                in_packets=c.packets_recv,
                out_packets=c.packets_sent,
                in_errors=c.errin,
                out_errors=c.errout,
            )
            for name, c in psutil.net_io_counters(pernic=True).items()
            if name != "lo"
        ]

    def _our_processes(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._scanned_at >= PROCESS_RESCAN_S:
            self._rescan()
        found = []
        for pid, process in list(self._processes.items()):
            try:
                with process.oneshot():
                    cpu = process.cpu_percent(interval=None) / 100 / self.cores
                    rss = process.memory_info().rss
                    memory_pct = process.memory_percent() / 100
                    cmdline = " ".join(process.cmdline())
                    name = process.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                del self._processes[pid]
                continue
            found.append(
                events.process_event(
                    pid=pid,
                    name=name,
                    role=process_role(cmdline),
                    cpu_pct=cpu,
                    rss=rss,
                    memory_pct=memory_pct,
                    cmdline=cmdline,
                )
            )
        return found

    def _rescan(self) -> None:
        """Find our processes again every few seconds; keep known ones for their CPU baseline."""
        self._scanned_at = time.monotonic()
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(process.info.get("cmdline") or []).lower()
            if process.pid in self._processes or not cmdline:
                continue
            if any(word in cmdline for word in self.process_words):
                process.cpu_percent(interval=None)  # baseline for the next call
                self._processes[process.pid] = process
