"""Serving benchmark: our Ray Serve app vs `mlflow models serve`, the same champion, the same
load generator (wrk), measured side by side in one run. Not a test: it prints tables and ratios.

    make bench-serving            # or: .venv/bin/python benchmarks/serving.py --duration 20

1. Throughput and latency: one single-record `POST /invocations` body (MLflow's protocol, which
   both servers speak), at concurrency 1, 16 and 64 for `--duration` seconds each. MLflow runs
   alone first (its default single worker), then ours (replicas as serving/serve_config.yaml
   sets them: 2 x 1 CPU), so neither competes with the other's idle processes.
2. Batch scoring: one request of 10,000 rows (`dataframe_split`) against our server, vs the same
   rows scored in-process by the same model (`LoadedModel.predict_frame`).

`--during-retrain URL` measures a running server instead: idle, then while `POST /admin/retrain`
trains beside its replicas.

The model is a random forest trained once into `var/bench/` on the bundled data (so the numbers
compare with the issue's), or the configured champion with `--use-champion`.
Results are also written to `var/reports/bench_serving.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ml.config import Settings  # noqa: E402
from ml.data import load_frame  # noqa: E402
from ml.model_ref import ModelRef  # noqa: E402
from ml.predict import LoadedModel, load_version  # noqa: E402
from ml.registry import RegistryError  # noqa: E402
from ml.common.net import free_port, wait_http  # noqa: E402

LEVELS = (1, 16, 64)
BATCH_ROWS = 10_000
BATCH_WARM_UP_REQUESTS = 4  # two per replica
TELEMETRY_DRAIN_S = 1.0  # a 10,000-row request leaves about 0.2 s of event writing behind
LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class LoadResult:
    server: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


# --- the model -------------------------------------------------------------------------------


def champion(settings: Settings, use_configured: bool) -> tuple[Settings, str]:
    """(settings, version) to benchmark: by default a random forest trained once into
    `var/bench/` on the bundled data (so the numbers compare with the issue's); with
    `--use-champion`, the configured champion (MLOPS_* settings)."""
    from ml.common.tracking import configure_tracking
    from ml.pipeline import run_pipeline
    from ml.predict import resolve_version

    if use_configured:
        configure_tracking(settings)
        return settings, resolve_version(settings.model_name)
    bench = settings.model_copy(
        update={
            "var_dir": settings.var_dir / "bench",
            "model_name": "bench-forest",
            "mlflow_tracking_uri": f"sqlite:///{settings.var_dir / 'bench' / 'mlflow.db'}",
            "optuna_storage": f"sqlite:///{settings.var_dir / 'bench' / 'optuna.db'}",
            "families": ["random_forest"],
            "trials": 3,
            "timeout_s": 300,
            "log_dir": settings.var_dir / "bench" / "log",
        }
    )
    configure_tracking(bench)
    try:
        return bench, resolve_version(bench.model_name)
    except RegistryError:
        print("training a random forest into var/bench/ (once; about a minute)", flush=True)
        run_pipeline(bench)
        return bench, resolve_version(bench.model_name)


# --- load generation -------------------------------------------------------------------------


def wrk(url: str, body_file: Path, concurrency: int, duration_s: int, server: str) -> LoadResult:
    """wrk (C, one thread) with latency percentiles; errors = non-2xx + socket errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA)
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script.name,
        url,
    ]
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_BODY": str(body_file)},
    ).stdout
    os.unlink(script.name)
    return LoadResult(
        server,
        concurrency,
        _number(r"Requests/sec:\s+([\d.]+)", output),
        _latency_ms(output, "50%"),
        _latency_ms(output, "99%"),
        _errors(output),
        int(_number(r"(\d+) requests in", output)),
    )


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _errors(text: str) -> int:
    non_2xx = _number(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return int(non_2xx + (sum(int(group) for group in socket.groups()) if socket else 0))


def run_levels(url: str, body_file: Path, duration_s: int, server: str) -> list[LoadResult]:
    wrk(url, body_file, 4, 3, server)  # warm-up: first requests pay for imports and caches
    results = []
    for level in LEVELS:
        result = wrk(url, body_file, level, duration_s, server)
        print(
            f"  {server:<7} c={level:<3} {result.requests_per_s:8.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"errors {result.errors}",
            flush=True,
        )
        results.append(result)
    return results


# --- servers ---------------------------------------------------------------------------------


def bench_mlflow(
    settings: Settings, version: str, body: Path, duration_s: int, log_dir: Path
) -> list[LoadResult]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        ModelRef(settings.model_name, version).uri,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--env-manager",
        "local",
        "-w",
        "1",
    ]
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri), "PATH": path}
    with (log_dir / "mlflow-serve.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 180, process)
            return run_levels(f"http://127.0.0.1:{port}/invocations", body, duration_s, "mlflow")
        finally:
            process.terminate()
            process.wait(30)


@contextmanager
def our_server(settings: Settings, version: str, log_dir: Path) -> Iterator[str]:
    """Our app on an in-process Ray, as serving/serve_config.yaml has it (2 x 1 CPU here)."""
    from serving.lifecycle import start_serving
    from serving.local_cluster import in_process_cluster

    with in_process_cluster(num_cpus=2, haproxy=settings.serve_haproxy):
        port = free_port()
        local = settings.model_copy(
            update={
                "var_dir": log_dir,
                "log_dir": log_dir / "log",
                "ct_database": f"sqlite:///{log_dir / 'ct.db'}",
                "serve_port": port,
            }
        )
        yield start_serving(local, version=version, port=port, local_cluster=False).base_url


# --- batch scoring ---------------------------------------------------------------------------


def batch_scoring(
    base_url: str, model: LoadedModel, frame: pd.DataFrame, repeats: int
) -> dict[str, float]:
    """rows/s of one 10,000-row request vs in-process scoring of the same rows (medians).

    In-process first, while the server is idle. Then a few untimed requests, so every replica
    has seen a large body once (the first costs about twice the next: allocator growth, lazy
    imports, the thread pool; the in-process side warms up the same way by its first call).
    Then the requests twice over: one at a time (a pause after each lets the replica write the
    10,000 telemetry events the request left behind, so every request is measured alone, as
    the target means), and back to back, where each request also competes with the previous
    one's telemetry: what a client streaming batches would see."""
    payload = json.dumps(
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    ).encode()
    model.predict_frame(frame)  # warm-up, untimed
    local = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict_frame(frame)
        local.append(time.perf_counter() - started)
    alone, back_to_back = [], []
    with httpx.Client(timeout=120) as client:
        for _ in range(BATCH_WARM_UP_REQUESTS):
            _score_remotely(client, base_url, payload, len(frame))
        for _ in range(repeats):
            time.sleep(TELEMETRY_DRAIN_S)
            alone.append(_score_remotely(client, base_url, payload, len(frame)))
        for _ in range(repeats):
            back_to_back.append(_score_remotely(client, base_url, payload, len(frame)))
    local_rps = len(frame) / statistics.median(local)
    alone_rps = len(frame) / statistics.median(alone)
    return {
        "rows": len(frame),
        "served_rows_per_s": alone_rps,
        "in_process_rows_per_s": local_rps,
        "ratio": alone_rps / local_rps,
        "back_to_back_rows_per_s": len(frame) / statistics.median(back_to_back),
        "back_to_back_ratio": len(frame) / statistics.median(back_to_back) / local_rps,
    }


def _score_remotely(client: httpx.Client, base_url: str, payload: bytes, rows: int) -> float:
    started = time.perf_counter()
    response = client.post(
        f"{base_url}/invocations", content=payload, headers={"content-type": "application/json"}
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert len(response.json()["predictions"]) == rows
    return elapsed


# --- report ----------------------------------------------------------------------------------


def print_report(
    mlflow_results: list[LoadResult],
    ours: list[LoadResult],
    batch: dict[str, float],
    model_uri: str,
) -> None:
    print(f"\nServing benchmark: {model_uri}, single-record POST /invocations, wrk -t1\n")
    header = (
        f"{'c':>3} | {'mlflow req/s':>12} {'p50':>7} {'p99':>7} {'err':>4} | "
        f"{'ours req/s':>10} {'p50':>7} {'p99':>7} {'err':>4} | {'ours/mlflow':>11}"
    )
    print(header)
    print("-" * len(header))
    for theirs, mine in zip(mlflow_results, ours):
        ratio = mine.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else 0.0
        print(
            f"{mine.concurrency:>3} | {theirs.requests_per_s:>12.1f} {theirs.p50_ms:>7.2f} "
            f"{theirs.p99_ms:>7.2f} {theirs.errors:>4} | {mine.requests_per_s:>10.1f} "
            f"{mine.p50_ms:>7.2f} {mine.p99_ms:>7.2f} {mine.errors:>4} | {ratio:>10.1f}x"
        )
    print("(latencies in ms)\n")
    print(f"Batch scoring, one request of {batch['rows']:,} rows (dataframe_split):")
    print(f"  in-process            {batch['in_process_rows_per_s']:>10,.0f} rows/s")
    print(
        f"  served, one at a time {batch['served_rows_per_s']:>10,.0f} rows/s"
        f"  ratio {batch['ratio']:.2f} (target >= 0.5)"
    )
    print(
        f"  served, back to back  {batch['back_to_back_rows_per_s']:>10,.0f} rows/s"
        f"  ratio {batch['back_to_back_ratio']:.2f}"
    )
    at_64 = {r.server: r for r in mlflow_results + ours if r.concurrency == 64}
    at_1 = {r.server: r for r in mlflow_results + ours if r.concurrency == 1}
    if "mlflow" in at_64 and "ours" in at_64 and at_64["mlflow"].requests_per_s:
        ratio_64 = at_64["ours"].requests_per_s / at_64["mlflow"].requests_per_s
        print("\nTargets:")
        print(
            f"  c=64 throughput ratio {ratio_64:.1f}x (>= 20x), "
            f"p99 {at_64['ours'].p99_ms:.1f} ms (< 100 ms)"
        )
        print(
            f"  c=1 p50 ours {at_1['ours'].p50_ms:.2f} ms vs mlflow "
            f"{at_1['mlflow'].p50_ms:.2f} ms (no worse)"
        )


RECORDING_ENV = "MLOPS_CT_RECORD_PREDICTIONS"


def recording_cost(
    settings: Settings, version: str, body: Path, duration_s: int, work: Path, rounds: int = 2
) -> None:
    """Our server with prediction recording (the CT database) off, then on, `rounds` times
    interleaved, each on a fresh in-process cluster; medians per level and their ratio."""
    results: dict[str, list[LoadResult]] = {"off": [], "on": []}
    saved = os.environ.get(RECORDING_ENV)
    try:
        for round_number in range(rounds):
            for mode in ("off", "on"):
                os.environ[RECORDING_ENV] = "true" if mode == "on" else "false"
                print(f"round {round_number + 1}: recording {mode}", flush=True)
                with our_server(settings, version, work / f"rec-{mode}-{round_number}") as url:
                    results[mode] += run_levels(f"{url}/invocations", body, duration_s, mode)
    finally:
        if saved is None:
            os.environ.pop(RECORDING_ENV, None)
        else:
            os.environ[RECORDING_ENV] = saved
    print(f"\nprediction recording, medians of {rounds} rounds (wrk, one row per request)")
    print(f"{'c':>4} {'off req/s':>10} {'on req/s':>10} {'on/off':>7} {'off p99':>8} {'on p99':>8}")
    for level in LEVELS:
        off = [r for r in results["off"] if r.concurrency == level]
        on = [r for r in results["on"] if r.concurrency == level]
        off_rps = statistics.median(r.requests_per_s for r in off)
        on_rps = statistics.median(r.requests_per_s for r in on)
        print(
            f"{level:>4} {off_rps:>10.1f} {on_rps:>10.1f} {on_rps / off_rps:>7.3f} "
            f"{statistics.median(r.p99_ms for r in off):>8.2f} "
            f"{statistics.median(r.p99_ms for r in on):>8.2f}"
        )


def during_retrain(base_url: str, token: str, body: Path, duration_s: int) -> None:
    """A running server's load (c=1 and 16) idle, then while `POST /admin/retrain`'s job
    trains beside the replicas on the same CPUs; says whether the job outlasted the window."""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{base_url}/invocations"
    wrk(url, body, 4, 3, "warm-up")
    idle = [wrk(url, body, level, duration_s, "idle") for level in (1, 16)]
    busy = []
    for level in (1, 16):
        answer = httpx.post(f"{base_url}/admin/retrain", headers=headers, timeout=30)
        answer.raise_for_status()
        job = answer.json()["job_id"]
        time.sleep(10)  # past the job's start-up: the window should see training, not imports
        busy.append(wrk(url, body, level, duration_s, "retrain"))
        status = httpx.get(f"{base_url}/admin/retrain/{job}", headers=headers, timeout=30).json()
        print(f"  job {job}: {status['status']} at the end of the c={level} window", flush=True)
        while status["status"] in ("PENDING", "RUNNING"):
            time.sleep(2)
            status = httpx.get(f"{base_url}/admin/retrain/{job}", headers=headers).json()
        print(f"  job {job}: {status['status']}: {(status['result'] or {}).get('detail')}")
    print(f"\nserving while a retrain runs (wrk, one row per request, {duration_s} s windows)")
    print(
        f"{'c':>4} {'idle req/s':>11} {'retrain req/s':>14} {'ratio':>6} {'idle p99':>9} "
        f"{'retrain p99':>12} {'errors':>7}"
    )
    for quiet, loaded in zip(idle, busy):
        print(
            f"{quiet.concurrency:>4} {quiet.requests_per_s:>11.1f} {loaded.requests_per_s:>14.1f} "
            f"{loaded.requests_per_s / quiet.requests_per_s:>6.2f} {quiet.p99_ms:>9.2f} "
            f"{loaded.p99_ms:>12.2f} {quiet.errors + loaded.errors:>7}"
        )


def _one_row(sample: pd.DataFrame) -> dict:
    return {"dataframe_split": json.loads(sample.iloc[:1].to_json(orient="split", index=False))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recording-cost",
        action="store_true",
        help="only our server, prediction recording off vs on (interleaved rounds)",
    )
    parser.add_argument(
        "--during-retrain",
        metavar="URL",
        help="only the running server at URL, idle vs during POST /admin/retrain "
        "(MLOPS_ADMIN_TOKEN); e.g. after `make run`: http://127.0.0.1:8000",
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds per level")
    parser.add_argument("--batch-repeats", type=int, default=9)
    parser.add_argument(
        "--use-champion",
        action="store_true",
        help="benchmark the configured champion instead of var/bench's forest",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/serving.py: wrk is not installed (make setup installs it)")
    if args.during_retrain:
        token = os.environ.get("MLOPS_ADMIN_TOKEN")
        if not token:
            sys.exit("--during-retrain: set MLOPS_ADMIN_TOKEN (the server's admin token)")
        body = Path(tempfile.mkdtemp(prefix="bench-retrain-")) / "one-row.json"
        body.write_text(json.dumps(_one_row(load_frame("demo").drop(columns=["target"]))))
        during_retrain(args.during_retrain.rstrip("/"), token, body, args.duration)
        return
    settings, version = champion(Settings(), args.use_champion)
    model = load_version(settings.model_name, version)
    sample = load_frame("demo").drop(columns=["target"])[list(model.feature_types)]
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    body = work / "one-row.json"
    body.write_text(json.dumps(_one_row(sample)))
    print(f"model {model.uri} ({type(model.model[-1]).__name__}); work dir {work}")
    if args.recording_cost:
        recording_cost(settings, version, body, args.duration, work)
        return
    mlflow_results = bench_mlflow(settings, version, body, args.duration, work)
    with our_server(settings, version, work) as base_url:
        our_results = run_levels(f"{base_url}/invocations", body, args.duration, "ours")
        rows = sample.sample(BATCH_ROWS, replace=True, random_state=0).reset_index(drop=True)
        batch = batch_scoring(base_url, model, rows, args.batch_repeats)
    print_report(mlflow_results, our_results, batch, model.uri)
    report = (
        settings.var_dir.parent / "reports"
        if settings.var_dir.name == "bench"
        else (settings.var_dir / "reports")
    )
    report.mkdir(parents=True, exist_ok=True)
    (report / "bench_serving.json").write_text(
        json.dumps(
            {
                "model_uri": model.uri,
                "duration_s": args.duration,
                "load": [asdict(result) for result in mlflow_results + our_results],
                "batch": batch,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {report / 'bench_serving.json'}")


if __name__ == "__main__":
    main()
