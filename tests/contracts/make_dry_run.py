"""What the Makefile would do, from make's own dry run: one source for the contract tests."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO_ROOT


def docker_build_tags() -> list[str]:
    """The tags `make docker-build` gives the serving image."""
    result = subprocess.run(
        ["make", "-s", "-n", "docker-build"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return re.findall(r"-t\s+(\S+)", result.stdout)
