"""`make watch`: re-run a command (default `make ci`) whenever a git-tracked file changes.

Only tracked files count, so what the command writes (reports/, var/, caches) never
re-triggers it. The command runs once at start, then after each batch of changes; changes made
while it runs are picked up when it finishes.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess  # nosec B404  # runs the developer's own command
import sys
import time
from pathlib import Path

from watchfiles import Change, DefaultFilter, watch

TRACKED_CACHE_S = 2.0


class TrackedFilter(DefaultFilter):
    """Accept a change only when git tracks the file (re-read on every check)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root.resolve()
        self._tracked: set[Path] = set()
        self._listed_at = float("-inf")

    def tracked(self) -> set[Path]:
        """`git ls-files`, cached briefly: a test run writes thousands of untracked files."""
        if time.monotonic() - self._listed_at > TRACKED_CACHE_S:
            listed = subprocess.run(  # nosec B603 B607  # fixed git command
                ["git", "ls-files", "-z"], cwd=self.root, capture_output=True, check=True
            ).stdout.decode()
            self._tracked = {self.root / name for name in listed.split("\0") if name}
            self._listed_at = time.monotonic()
        return self._tracked

    def __call__(self, change: Change, path: str) -> bool:
        return super().__call__(change, path) and Path(path).resolve() in self.tracked()


def run_command(command: str, root: Path) -> int:
    """Run the command in a shell at the repo root; its exit status is only reported."""
    print(f"watch: running {command}", flush=True)
    code = subprocess.run(command, shell=True, cwd=root, check=False).returncode  # nosec B602
    verdict = "passed" if code == 0 else f"FAILED (exit {code})"
    print(f"watch: {verdict}; waiting for changes to tracked files", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--command", default="make ci", help="shell command to (re-)run")
    parser.add_argument("--root", type=Path, default=Path("."), help="the git checkout")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after N runs (0: never)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / ".git").exists():
        parser.error(f"--root: {root} is not a git checkout")
    if not args.command.strip() or not shlex.split(args.command):
        parser.error("--command: empty")
    runs = 1
    run_command(args.command, root)
    if args.max_runs == 1:
        return 0
    for changes in watch(root, watch_filter=TrackedFilter(root), raise_interrupt=False):
        names = sorted({Path(path).relative_to(root).as_posix() for _, path in changes})
        print(f"watch: changed {', '.join(names)}", flush=True)
        run_command(args.command, root)
        runs += 1
        if args.max_runs and runs >= args.max_runs:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
