"""`ModelRef`: one registered model version and its `models:/<name>/<version>` URI.

The chain trains, gates, serves and watches exact versions; an alias (`champion`) is resolved
to a number first (`ml.predict.resolve_version`), so a served model never changes under a
replica. This module builds and parses that URI; nothing else spells it out. It imports only
the standard library, so serving's request validation can use it cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "models:/"
_NAME = r"[^/@]+"  # MLflow's URI grammar gives '/' and '@' a meaning
_VERSION = r"[0-9]+"
_URI = re.compile(rf"{SCHEME}(?P<name>{_NAME})/(?P<version>{_VERSION})")


@dataclass(frozen=True)
class ModelRef:
    """A registered model's name and version number (a string, as MLflow's clients give it)."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not re.fullmatch(_NAME, self.name):
            raise ValueError(f"model name {self.name!r}: must be non-empty, without '/' or '@'")
        if not re.fullmatch(_VERSION, self.version):
            raise ValueError(f"model {self.name!r}: version must be a number, got {self.version!r}")

    @property
    def uri(self) -> str:
        """`models:/<name>/<version>`, what MLflow loads and serving deploys."""
        return f"{SCHEME}{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """The reference in `models:/<name>/<version>`; ValueError says what is wrong with
        any other URI (an alias, `latest`, another scheme)."""
        match = _URI.fullmatch(uri)
        if match:
            return cls(match["name"], match["version"])
        if uri.startswith(SCHEME) and "@" in uri:
            raise ValueError(
                f"{uri!r} names an alias, not a version: resolve it to a version number first"
            )
        raise ValueError(f"{uri!r} is not {SCHEME}<name>/<version> with a version number")
