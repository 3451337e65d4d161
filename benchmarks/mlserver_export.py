"""The benchmark's model as MLServer serves it: the project's fitted pipeline as a joblib file,
MLServer's `model-settings.json` (its scikit-learn runtime, adaptive batching) and
`settings.json` (parallel inference workers, ports), and one V2-protocol request body.

V2 tensors carry no column names and the pipeline was fitted on a frame (its ColumnTransformer
picks columns by name), so the exported model is the pipeline behind a `FunctionTransformer`
that names the columns: `pandas.DataFrame` itself, which unpickles in MLServer's environment
with nothing of this project's code. MLServer then answers `predict` (labels).
`tests/unit/test_bench_serving.py` loads the export the way mlserver-sklearn does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

MODEL_FILE = "model.joblib"
RUNTIME = "mlserver_sklearn.SKLearnModel"  # the class mlserver-sklearn registers


@dataclass(frozen=True)
class MLServerOptions:
    """What the benchmark tunes: inference worker processes and adaptive batching."""

    parallel_workers: int
    max_batch_size: int
    max_batch_time_s: float

    @property
    def label(self) -> str:
        return (
            f"{self.parallel_workers} workers, batch {self.max_batch_size} / "
            f"{self.max_batch_time_s * 1000:g} ms"
        )


def named_columns_pipeline(pipeline: Pipeline, columns: list[str]) -> Pipeline:
    """The fitted pipeline, taking a float matrix in `columns` order (what V2 decodes to)."""
    to_frame = FunctionTransformer(pd.DataFrame, kw_args={"columns": columns})
    return Pipeline([("named_columns", to_frame), ("model", pipeline)])


def export(
    pipeline: Pipeline,
    columns: list[str],
    model_name: str,
    options: MLServerOptions,
    ports: tuple[int, int, int],
    folder: Path,
) -> Path:
    """Write MLServer's model folder (the repository root MLServer is started on)."""
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(named_columns_pipeline(pipeline, columns), folder / MODEL_FILE)
    http_port, grpc_port, metrics_port = ports
    settings = {
        "parallel_workers": options.parallel_workers,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": True,
        "debug": False,
    }
    model_settings = {
        "name": model_name,
        "implementation": RUNTIME,
        "max_batch_size": options.max_batch_size,
        "max_batch_time": options.max_batch_time_s,
        "parameters": {"uri": f"./{MODEL_FILE}", "version": "1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return folder


def v2_body(row: np.ndarray) -> dict[str, object]:
    """One row as an Open Inference (V2) request: one FP64 tensor of shape [1, features]."""
    values = np.asarray(row, dtype=float).reshape(1, -1)
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(values.shape),
                "datatype": "FP64",
                "data": values.ravel().tolist(),
            }
        ]
    }


def v2_path(model_name: str) -> str:
    return f"/v2/models/{model_name}/infer"
