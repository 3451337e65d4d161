"""The sha256 of a registered model's files: recorded as a version tag at registration,
checked whenever the version is loaded.

A model store is a directory tree (local `mlartifacts/`, the server's artifact root, S3): a
file can be truncated by a full disk, deleted by a clean-up or replaced by hand, and MLflow loads
whatever it finds. The digest covers every file of the model directory, names and bytes, so any
change refuses the load with a reason; a version registered before the tag existed loads with a
warning instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DIGEST_TAG = "model.sha256"
CHUNK = 1 << 20


class IntegrityError(ValueError):
    """The model's files are not those registered."""


def model_digest(model_dir: str | Path) -> str:
    """sha256 over each file's relative path and content, in path order."""
    root = Path(model_dir)
    files = sorted(path for path in root.rglob("*") if path.is_file())
    if not files:
        raise IntegrityError(f"{root}: no model files")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def check_digest(model_dir: str | Path, recorded: str, where: str) -> None:
    """Raise IntegrityError naming `where` when the files no longer have the recorded digest."""
    actual = model_digest(model_dir)
    if actual != recorded:
        raise IntegrityError(
            f"{where}: model files changed since registration "
            f"(sha256 {actual[:12]}..., registered {recorded[:12]}...)"
        )
