"""What the training-chain fault tests share: the real `mlops` command in a subprocess on a
temporary var/ (local SQLite stores unless told otherwise), its output read live, so a test
injects its fault when the command says it reached a stage (`stage tune started`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.integrity import DIGEST_TAG
from tests.conftest import REPO_ROOT

MLOPS = str(Path(sys.executable).with_name("mlops"))
MODEL = "fault-model"
# The bundled data, one cheap family: a run costs its start-up, not its tuning.
CHEAP = {"MLOPS_FAMILIES": "logreg", "MLOPS_MODEL_NAME": MODEL, "MLOPS_CV_FOLDS": "3"}
WAIT_S = 600  # a busy 2-core machine is slow; these are ceilings, never asserted durations


def mlops_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The command's environment: its own var/ and HOME, nothing of the caller's stores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    env.update(
        MLOPS_VAR_DIR=str(var_dir),
        HOME=str(var_dir.parent / "home"),
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",  # one stage or error line, not folded
        **CHEAP,
    )
    env.update(extra)
    return env


@dataclass
class Command:
    """A running `mlops ...` whose merged output is collected line by line."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: Sequence[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> Command:
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            [MLOPS, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        command = cls(process)
        threading.Thread(target=command._read, daemon=True).start()
        return command

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Until `condition` holds; fails if the command ended first."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"mlops ended ({self.process.returncode}) before {what}:\n"
                    f"{self.output[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"never happened: {what}")

    def wait_for_line(self, text: str) -> None:
        self.wait_for(lambda: any(text in line for line in self.lines), repr(text))

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def finish(self) -> int:
        return self.process.wait(timeout=WAIT_S)


def run_mlops(args: Sequence[str], env: dict[str, str]) -> Command:
    command = Command.start(args, env)
    command.finish()
    time.sleep(0.1)  # the reader thread takes the last lines
    return command


def gone(processes: list[psutil.Process]) -> bool:
    """Each process has exited (a zombie not yet reaped by its new parent counts as exited)."""
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def aliased_versions_are_whole(client: MlflowClient, name: str) -> dict[str, str]:
    """{alias: version}, after checking that every alias points at a version whose sha256 was
    recorded, i.e. whose files were all stored and read back before the alias was set."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:  # only "not registered at all" means no alias
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return {}
    aliases = dict(model.aliases)
    for alias, version in aliases.items():
        tags = client.get_model_version(name, version).tags
        assert DIGEST_TAG in tags, f"alias {alias} on version {version} without {DIGEST_TAG}"
    return aliases
