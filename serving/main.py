"""`mlops`, the one command of the chain, composed from the three layers.

The only module that sees all of them, so it sits in the top one: `ml.cli` brings the training
commands, `elk.cli` adds `monitor ...` and `serving.cli` adds `serve` and `serve-stop`; both
subscribe to what `ml.cli`'s commands do, in this order: elk records a finished run or a
promotion as events, then serving swaps the served model to a new champion.
"""

from __future__ import annotations

import os

# No usage reports from our runs, as the Makefile has it, for `mlops` run directly too (and the
# Ray processes it starts, which inherit it); `MLFLOW_DISABLE_TELEMETRY=false` opts in. Set
# before anything imports MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# pylint: disable=wrong-import-position
from elk import cli as elk_cli  # noqa: E402
from ml import cli as ml_cli  # noqa: E402
from serving import cli as serving_cli  # noqa: E402

app = ml_cli.app
for layer in (elk_cli, serving_cli):
    layer.register(app)
    ml_cli.subscribe(layer)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # `python -m serving.main`: how a Ray job runs it (POST /admin/retrain)
    main()
