"""The serving benchmark's own code, without servers or load: its table, ratio and target
arithmetic (benchmarks/serving_report.py), the model folder it hands MLServer
(benchmarks/mlserver_export.py) and the limit server's scoring (benchmarks/limit_server.py).

MLServer runs in its own venv (scripts/mlserver.sh) and is not imported here: the export is
loaded the way mlserver-sklearn 1.7.1 loads it (`joblib.load` of `model.joblib`, then
`predict` on the V2 tensor decoded to a numpy array of the request's shape), and its settings
files are checked against the fields MLServer 1.7.1's `Settings` and `ModelSettings` define.
"""

from __future__ import annotations

import asyncio
import json
import math

import joblib
import numpy as np
import pytest

from benchmarks.limit_server import LimitModel, MicroBatcher
from benchmarks.mlserver_export import MODEL_FILE, RUNTIME, MLServerOptions, export, v2_body
from benchmarks.serving_report import (
    LoadResult,
    format_ratios,
    format_table,
    format_targets,
    ratio,
    summarize,
    targets,
)
from ml.data import validate
from ml.decision import decide
from ml.features import build_pipeline
from tests.unit.test_data import mixed_frame
from tests.unit.test_features import PARAMS

# Fields of MLServer 1.7.1's mlserver.settings.Settings / ModelSettings the export writes.
MLSERVER_SETTINGS_FIELDS = {
    "parallel_workers",
    "host",
    "http_port",
    "grpc_port",
    "metrics_port",
    "load_models_at_startup",
    "debug",
}
MODEL_SETTINGS_FIELDS = {"name", "implementation", "max_batch_size", "max_batch_time", "parameters"}


def _window(server: str, level: int, rps: float, p50: float, p99: float, errors: int = 0):
    return LoadResult(server, level, rps, p50, p99, errors, int(rps * 10), 1, 1.5, 0.2)


def _all_levels(server: str, rps_at_64: float, p99_at_64: float, p50_at_1: float):
    return [
        _window(server, 1, 100.0, p50_at_1, 5.0),
        _window(server, 16, 500.0, 10.0, 30.0),
        _window(server, 64, rps_at_64, 20.0, p99_at_64),
    ]


def test_summaries_are_medians_with_the_spread_and_summed_errors() -> None:
    windows = [
        _window("ours", 64, 900.0, 20.0, 60.0, errors=1),
        _window("ours", 64, 1200.0, 18.0, 40.0),
        _window("ours", 64, 1000.0, 25.0, 45.0, errors=2),
    ]
    summary = summarize(windows)[("ours", 64)]
    assert (summary.rounds, summary.requests_per_s, summary.spread) == (3, 1000.0, "900-1200")
    assert (summary.p50_ms, summary.p99_ms, summary.errors) == (20.0, 45.0, 3)


def test_targets_met_and_missed_on_the_medians() -> None:
    met = summarize(
        _all_levels("ours", 1500.0, 40.0, 2.5)
        + _all_levels("mlserver", 500.0, 190.0, 20.0)
        + _all_levels("limit", 2000.0, 30.0, 1.0)
    )
    assert ratio(met, "mlserver", 64) == 3.0
    assert ratio(met, "limit", 64) == 0.75
    assert [target.met for target in targets(met)] == [True, True, True, True]
    missed = summarize(
        _all_levels("ours", 1400.0, 50.0, 3.0)
        + _all_levels("mlserver", 500.0, 190.0, 20.0)
        + _all_levels("limit", 2100.0, 30.0, 1.0)
    )
    assert [target.met for target in targets(missed)] == [False, False, False, False]
    assert "MISSED" in format_targets(targets(missed))


def test_a_peer_not_measured_is_a_missed_target_not_a_crash() -> None:
    summaries = summarize(_all_levels("ours", 1500.0, 40.0, 2.5))
    assert math.isnan(ratio(summaries, "mlserver", 64))
    assert [target.met for target in targets(summaries)] == [False, True, False, True]
    assert "nan" in format_ratios(summaries, ["mlserver", "limit"])


def test_tables_have_a_line_per_server_and_level() -> None:
    summaries = summarize(
        _all_levels("ours", 1500.0, 40.0, 2.5) + _all_levels("mlserver", 500.0, 190.0, 20.0)
    )
    table = format_table(summaries, ["ours", "mlserver", "limit"]).splitlines()
    assert len(table) == 2 + 6
    assert table[-1].split()[:4] == ["mlserver", "64", "1", "500.0"]
    ratios = format_ratios(summaries, ["mlserver"]).splitlines()
    assert ratios[-1].split()[:2] == ["64", "3.00x"]


@pytest.fixture(scope="module")
def numeric_model():
    """A fitted forest pipeline on numeric features with gaps (the benchmark's kind)."""
    dataset = validate(mixed_frame().drop(columns=["plan"]), "churned", source="frame")
    model = build_pipeline(PARAMS["random_forest"], dataset.feature_types, seed=0)
    return model.fit(dataset.X, dataset.y), dataset


def test_mlserver_export_loads_and_predicts_as_mlserver_sklearn_does(numeric_model, tmp_path):
    pipeline, dataset = numeric_model
    columns = list(dataset.X.columns)
    options = MLServerOptions(parallel_workers=2, max_batch_size=64, max_batch_time_s=0.002)
    folder = export(pipeline, columns, "bench-forest", options, (8081, 8082, 8083), tmp_path)
    settings = json.loads((folder / "settings.json").read_text())
    model_settings = json.loads((folder / "model-settings.json").read_text())
    assert set(settings) <= MLSERVER_SETTINGS_FIELDS
    assert set(model_settings) <= MODEL_SETTINGS_FIELDS
    assert model_settings["implementation"] == RUNTIME
    assert (model_settings["max_batch_size"], model_settings["max_batch_time"]) == (64, 0.002)
    assert (folder / model_settings["parameters"]["uri"]).resolve() == folder / MODEL_FILE
    loaded = joblib.load(folder / MODEL_FILE)
    rows = dataset.X.iloc[:5]
    for index in range(len(rows)):
        tensor = v2_body(rows.iloc[index].to_numpy(dtype=float))["inputs"][0]
        decoded = np.asarray(tensor["data"], dtype=float).reshape(tensor["shape"])
        assert loaded.predict(decoded).tolist() == pipeline.predict(rows.iloc[[index]]).tolist()
    batch = rows.to_numpy(dtype=float)  # adaptive batching stacks the requests' tensors
    assert loaded.predict(batch).tolist() == pipeline.predict(rows).tolist()


def test_the_limit_server_scores_as_the_pipeline_alone_and_micro_batched(numeric_model, tmp_path):
    pipeline, dataset = numeric_model
    columns = list(dataset.X.columns)
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    classes = pipeline.classes_.tolist()
    config = {"model": str(tmp_path / "pipeline.joblib"), "columns": columns, "classes": classes}
    (tmp_path / "limit.json").write_text(json.dumps({**config, "threshold": 0.3}))
    model = LimitModel.from_config(tmp_path / "limit.json")
    rows = dataset.X.to_numpy(dtype=float)
    expected = decide(pipeline.predict_proba(dataset.X), np.asarray(classes, dtype=object), 0.3)
    assert model.labels_of(rows) == expected.tolist()

    async def concurrently() -> list[list[object]]:
        batcher = MicroBatcher(model)
        return await asyncio.gather(*(batcher.labels(rows[i : i + 1]) for i in range(20)))

    assert [labels[0] for labels in asyncio.run(concurrently())] == expected[:20].tolist()
