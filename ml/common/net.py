"""Local servers: a port to start one on, and waiting until it answers."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import httpx

# Listeners here often bind a while after their port is chosen (HAProxy binds its stats port
# when Serve starts, seconds after `ray start`), and meanwhile the OS hands ports of its
# ephemeral range to outgoing connections, of which Ray opens dozens: a port from that range
# can be taken by then (HAProxy's stats port was, in CI). So ports come from a range the OS
# never hands out, below Ray Serve's direct-ingress ports (30000-31000).
LISTEN_PORTS = range(20000, 30000)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A TCP port nothing listens on now, on any interface, outside the ephemeral range; the
    OS's choice where none is found. Another starter may still pick the same one (1 in 10,000
    a pair): a server that fails to bind says which port."""
    ephemeral = _ephemeral_range()
    candidates = [port for port in random.sample(LISTEN_PORTS, 64) if port not in ephemeral]
    for port in candidates:
        if _bindable(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> range:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))  # all interfaces: HAProxy binds 0.0.0.0
        except OSError:
            return False
        return True


def wait_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail fast if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server exited with code {process.returncode} before {url} answered"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")
