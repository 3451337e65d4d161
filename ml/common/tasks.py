"""What a model predicts: a class (classification) or a number (regression). One place for the
names, which are also stored as a version's `task` tag and in the model's metadata."""

from __future__ import annotations

from typing import Literal

CLASSIFICATION = "classification"
REGRESSION = "regression"
Task = Literal["classification", "regression"]
TaskChoice = Literal["auto", "classification", "regression"]  # auto: inferred from the target
