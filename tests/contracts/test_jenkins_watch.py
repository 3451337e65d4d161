"""`make watch` re-runs its command when a git-tracked file changes, and only then.

Runs the real Makefile target (watchfiles on a temporary git checkout), with a cheap
WATCH_CMD instead of `make ci`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _wait_for_lines(path: Path, count: int, timeout_s: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not reach {count} lines")


def test_make_watch_reruns_on_tracked_changes_only(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    tracked = repo / "module.py"
    tracked.write_text("VALUE = 1\n")
    _git(repo, "add", "module.py")
    _git(repo, "commit", "-q", "-m", "initial")
    runs = repo / "runs.log"  # untracked: written by the command itself
    watcher = subprocess.Popen(
        [
            "make",
            "-C",
            str(REPO_ROOT),
            "watch",
            f"WATCH_ROOT={repo}",
            "WATCH_CMD=echo checked >> runs.log",
            "WATCH_ARGS=--max-runs 2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _wait_for_lines(runs, 1) == ["checked"]
        time.sleep(2)  # let watchfiles settle on the first run's own write
        (repo / "scratch.txt").write_text("untracked: must not trigger\n")
        time.sleep(4)  # longer than watchfiles' 1.6 s debounce
        assert runs.read_text().splitlines() == ["checked"]

        tracked.write_text("VALUE = 2\n")

        assert _wait_for_lines(runs, 2) == ["checked", "checked"]
        output, _ = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.terminate()
            watcher.wait(timeout=20)
    assert watcher.returncode == 0, output
    assert "watch: changed module.py" in output
    assert "scratch.txt" not in output
