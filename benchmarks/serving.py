"""Serving benchmark: our Ray Serve app against MLServer, a bare limit server and
`mlflow models serve`, the same model, the same load generator (wrk), in one sitting. Not a
test: it prints tables, ratios and issue 26's targets met or missed.

    make bench-serving                      # 3 interleaved rounds, 20 s windows
    make bench-serving BENCH_ARGS=--quick   # 2 rounds, 5 s windows: for development

1. Throughput and latency, one row per request, at concurrency 1, 16 and 64 per window:
   - ours: `POST /invocations` (MLflow's protocol), replicas as serving/serve_config.yaml sets
     them (2 x 1 CPU), every feature on (validation, telemetry, prediction ids, byte limits);
   - MLServer 1.7.1 (its own venv, scripts/mlserver.sh): the same fitted pipeline through
     mlserver-sklearn, V2 protocol, parallel workers and adaptive batching as `MLSERVER`
     (the best of `--mlserver-sweep` on this machine);
   - limit: `benchmarks/limit_server.py`, our fast path behind a raw ASGI app, one process per
     core, micro-batching, no features: the bound no feature-carrying server can beat here;
   - mlflow: `mlflow models serve` (one worker), once, the old bar.
   Ours, MLServer and the limit run in `--rounds` interleaved rounds (the order rotates), each
   server started alone and stopped after its windows so none competes with another's idle
   processes; the report gives medians, the req/s spread, the load average and wrk's own CPU.
2. Batch scoring: one request of 10,000 rows (`dataframe_split`) against our server, vs the same
   rows scored in-process by the same model (`LoadedModel.predict_frame`).

`--mlserver-sweep` tries MLServer settings at c=16 and 64 instead; `--during-retrain URL`
measures a running server idle, then while `POST /admin/retrain` trains beside its replicas;
`--recording-cost` compares our server with prediction recording off and on.

The model is a random forest trained once into `var/bench/` on the bundled data (so the numbers
compare with the issue's), or the configured champion with `--use-champion`.
Results are also written to `var/reports/bench_serving.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import mlserver_export  # noqa: E402
from benchmarks.mlserver_export import MLServerOptions  # noqa: E402
from benchmarks.serving_report import (  # noqa: E402
    LEVELS,
    OURS,
    LoadResult,
    format_ratios,
    format_table,
    format_targets,
    summarize,
    targets,
)
from ml.config import Settings  # noqa: E402
from ml.data import load_frame  # noqa: E402
from ml.model_ref import ModelRef  # noqa: E402
from ml.predict import LoadedModel, load_version  # noqa: E402
from ml.registry import RegistryError  # noqa: E402
from ml.common.net import free_port, wait_http  # noqa: E402

CORES = os.cpu_count() or 1
# MLServer's best settings on this 2-core machine (`--mlserver-sweep`, docs/serving.md): one
# inference worker per core, batches of up to 64 gathered for at most 2 ms.
MLSERVER = MLServerOptions(parallel_workers=CORES, max_batch_size=64, max_batch_time_s=0.002)
MLSERVER_SWEEP = [
    MLServerOptions(1, 1, 0.0),  # MLServer's defaults: one inference worker, no batching
    MLServerOptions(0, 1, 0.0),  # inference in the server process
    MLServerOptions(CORES, 1, 0.0),
    MLServerOptions(CORES, 16, 0.001),
    MLServerOptions(CORES, 64, 0.002),
    MLServerOptions(CORES, 64, 0.005),
]
ROUND_SERVERS = (OURS, "mlserver", "limit")  # interleaved; mlflow runs once, before them
SERVER_START_S = 240
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


def wrk(
    url: str, body_file: Path, concurrency: int, duration_s: int, server: str, round_number: int = 1
) -> LoadResult:
    """wrk (C, one thread) with latency percentiles; errors = non-2xx + socket errors. wrk's
    own CPU time (its share of the machine) and the load average are kept with the window."""
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_BODY": str(body_file)},
    ).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(script.name)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LoadResult(
        server,
        concurrency,
        _number(r"Requests/sec:\s+([\d.]+)", output),
        _latency_ms(output, "50%"),
        _latency_ms(output, "99%"),
        _errors(output),
        int(_number(r"(\d+) requests in", output)),
        round=round_number,
        load_average=os.getloadavg()[0],
        wrk_cpu_share=cpu / (wall * CORES),
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


def run_levels(
    url: str,
    body_file: Path,
    duration_s: int,
    server: str,
    round_number: int = 1,
    levels: tuple[int, ...] = LEVELS,
) -> list[LoadResult]:
    wrk(url, body_file, 4, 3, server)  # warm-up: first requests pay for imports and caches
    results = []
    for level in levels:
        result = wrk(url, body_file, level, duration_s, server, round_number)
        print(
            f"  {server:<8} c={level:<3} {result.requests_per_s:8.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"errors {result.errors}  load {result.load_average:.2f}  "
            f"wrk cpu {result.wrk_cpu_share:.1%}",
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
    with _process(command, env, log_dir / "mlflow-serve.log", f"http://127.0.0.1:{port}/ping"):
        return run_levels(f"http://127.0.0.1:{port}/invocations", body, duration_s, "mlflow")


@contextmanager
def _process(
    command: list[str], env: dict[str, str], log: Path, ready_url: str, cwd: Path = REPO_ROOT
) -> Iterator[None]:
    """A server process, ready once `ready_url` answers, terminated (then killed) after."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=cwd
        )
        try:
            wait_http(ready_url, SERVER_START_S, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def mlserver_bin() -> Path:
    """MLServer's venv (created once by scripts/mlserver.sh, cached in CACHE_DIR)."""
    found = subprocess.run(
        [str(REPO_ROOT / "scripts" / "mlserver.sh"), "setup"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        sys.exit(f"benchmarks/serving.py: MLServer's venv could not be set up:\n{found.stderr}")
    return Path(found.stdout.strip())


@contextmanager
def mlserver(
    bin_dir: Path, model: LoadedModel, options: MLServerOptions, folder: Path
) -> Iterator[str]:
    """MLServer on the exported pipeline; yields the V2 inference URL."""
    ports = (free_port(), free_port(), free_port())
    mlserver_export.export(
        model.model, list(model.feature_types), model.name, options, ports, folder
    )
    # A clean environment: MLServer's workers must not see this venv's packages or settings.
    # A clean environment (MLServer's workers must not see this venv's packages or settings);
    # it writes its metrics files and environments in the working directory: the folder.
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(folder)}
    base = f"http://127.0.0.1:{ports[0]}"
    ready = f"{base}/v2/models/{model.name}/ready"
    command = [str(bin_dir / "mlserver"), "start", str(folder)]
    with _process(command, env, folder / "log", ready, cwd=folder):
        yield base + mlserver_export.v2_path(model.name)


def limit_config(model: LoadedModel, folder: Path) -> Path:
    """The limit server's model: the same fitted pipeline, its columns, classes, threshold."""
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model.model, folder / "pipeline.joblib")
    config = {
        "model": str(folder / "pipeline.joblib"),
        "columns": list(model.feature_types),
        "classes": [value.item() if hasattr(value, "item") else value for value in model.classes],
        "threshold": model.threshold,
    }
    (folder / "limit.json").write_text(json.dumps(config))
    return folder / "limit.json"


@contextmanager
def limit_server(config: Path, log: Path) -> Iterator[str]:
    """benchmarks/limit_server.py, one process per core; yields its `/invocations` URL."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.limit_server", str(config), "--port", str(port)]
    with _process(command, dict(os.environ), log, f"http://127.0.0.1:{port}/ping"):
        yield f"http://127.0.0.1:{port}/invocations"


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
    results: list[LoadResult],
    batch: dict[str, float] | None,
    model_uri: str,
    conditions: dict[str, object],
) -> None:
    summaries = summarize(results)
    print(
        f"\nServing benchmark: {model_uri}, one row per request, wrk -t1; "
        f"{conditions['rounds']} interleaved rounds x {conditions['duration_s']} s windows"
    )
    print(
        f"machine: {CORES} cores, load average {conditions['load_start']:.2f} at the start, "
        f"{conditions['load_end']:.2f} at the end (figures on a shared machine are noisy)"
    )
    print(f"MLServer 1.7.1: {MLSERVER.label}, V2 protocol; limit: {CORES} uvicorn processes\n")
    print(format_table(summaries, [OURS, "mlserver", "limit", "mlflow"]))
    print("(medians over the rounds; min-max: req/s spread; errors: summed; load: 1-minute")
    print(" load average; wrk cpu: wrk's own CPU time as a share of the machine's cores)\n")
    print("Our median req/s over each peer's (and the peers' p99, ms):")
    print(format_ratios(summaries, ["mlserver", "limit", "mlflow"]))
    if batch is not None:
        print(f"\nBatch scoring, one request of {batch['rows']:,} rows (dataframe_split):")
        print(f"  in-process            {batch['in_process_rows_per_s']:>10,.0f} rows/s")
        print(
            f"  served, one at a time {batch['served_rows_per_s']:>10,.0f} rows/s"
            f"  ratio {batch['ratio']:.2f} (target >= 0.5)"
        )
        print(
            f"  served, back to back  {batch['back_to_back_rows_per_s']:>10,.0f} rows/s"
            f"  ratio {batch['back_to_back_ratio']:.2f}"
        )
    print("\nTargets (issue 26, on the medians):")
    print(format_targets(targets(summaries)))


def interleaved_rounds(
    settings: Settings,
    version: str,
    model: LoadedModel,
    bodies: dict[str, Path],
    batch_rows: pd.DataFrame,
    args: argparse.Namespace,
    work: Path,
) -> tuple[list[LoadResult], dict[str, float] | None]:
    """Ours, MLServer and the limit server, each alone in turn, the order rotating per round;
    batch scoring against our server in the last round."""
    bin_dir = mlserver_bin()
    config = limit_config(model, work / "limit")
    results: list[LoadResult] = []
    batch = None
    for index in range(args.rounds):
        number = index + 1
        order = ROUND_SERVERS[index % 3 :] + ROUND_SERVERS[: index % 3]
        for server in order:
            print(f"round {number}/{args.rounds}: {server}", flush=True)
            folder = work / f"{server}-{number}"
            folder.mkdir(parents=True, exist_ok=True)
            if server == OURS:
                with our_server(settings, version, folder) as base_url:
                    url = f"{base_url}/invocations"
                    results += run_levels(url, bodies[OURS], args.duration, server, number)
                    if number == args.rounds:
                        batch = batch_scoring(base_url, model, batch_rows, args.batch_repeats)
            elif server == "mlserver":
                with mlserver(bin_dir, model, MLSERVER, folder) as url:
                    results += run_levels(url, bodies[server], args.duration, server, number)
            else:
                with limit_server(config, folder / "log") as url:
                    results += run_levels(url, bodies[OURS], args.duration, server, number)
    return results, batch


def mlserver_sweep(
    model: LoadedModel, body: Path, duration_s: int, work: Path
) -> list[tuple[MLServerOptions, list[LoadResult]]]:
    """MLServer under each candidate setting at c=16 and 64: which is its best here."""
    bin_dir = mlserver_bin()
    found = []
    for index, options in enumerate(MLSERVER_SWEEP):
        print(f"MLServer: {options.label}", flush=True)
        with mlserver(bin_dir, model, options, work / f"sweep-{index}") as url:
            found.append((options, run_levels(url, body, duration_s, "mlserver", 1, (16, 64))))
    print(f"\nMLServer settings, {duration_s} s windows (wrk, one row per request)")
    print(f"{'settings':<32} {'c=16 req/s':>10} {'p99':>7} {'c=64 req/s':>10} {'p99':>7}")
    for options, (c16, c64) in found:
        print(
            f"{options.label:<32} {c16.requests_per_s:>10.1f} {c16.p99_ms:>7.1f} "
            f"{c64.requests_per_s:>10.1f} {c64.p99_ms:>7.1f}"
        )
    return found


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


PROFILED = ("ray::ServeReplica", "ray::ProxyActor")  # HAProxy itself is C: not sampled


def profile_ours(
    settings: Settings, version: str, body: Path, duration_s: int, work: Path
) -> dict[str, list[tuple[str, float]]]:
    """Where our server's CPU goes at c=64: py-spy samples every replica and proxy process
    while wrk runs, and each frame's share of the samples (own and inclusive) is printed."""
    import psutil

    py_spy = Path(sys.executable).with_name("py-spy")
    with our_server(settings, version, work / "profile") as base_url:
        url = f"{base_url}/invocations"
        run_levels(url, body, 3, "warm-up", levels=(64,))
        targets_found = [
            process
            for process in psutil.process_iter(["pid", "cmdline"])
            if (process.info["cmdline"] or [""])[0].startswith(PROFILED)
        ]
        recorders = [
            subprocess.Popen(
                [str(py_spy), "record", "--pid", str(process.pid), "--duration", str(duration_s)]
                + ["--rate", "100", "--format", "raw", "--nonblocking", "--threads"]
                + ["--output", str(work / f"profile-{process.pid}.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for process in targets_found
        ]
        result = wrk(url, body, 64, duration_s, OURS)
        for recorder in recorders:
            recorder.wait(60)
    print(f"\nprofile at c=64: {result.requests_per_s:.1f} req/s, p99 {result.p99_ms:.1f} ms")
    shares = {}
    for process in targets_found:
        name = process.info["cmdline"][0].split(":")[-1]
        stacks = _collapsed(work / f"profile-{process.pid}.txt")
        shares[name] = _frame_shares(stacks)
        print(f"\n{name} (pid {process.pid}), top frames by inclusive share of samples:")
        for frame, share in shares[name][:25]:
            print(f"  {share:6.1%}  {frame}")
    return shares


def _collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: `frame;frame;... count` per line."""
    if not path.exists():
        return []
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _frame_shares(stacks: list[tuple[list[str], int]]) -> list[tuple[str, float]]:
    """Each frame's inclusive share of the samples that were not idle, largest first."""
    total = sum(count for _, count in stacks) or 1
    inclusive: dict[str, int] = {}
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    return sorted(((f, n / total) for f, n in inclusive.items()), key=lambda x: -x[1])


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
    parser.add_argument(
        "--mlserver-sweep", action="store_true", help="only MLServer, under each candidate setting"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only our server at c=64, sampled by py-spy: where its time goes",
    )
    parser.add_argument(
        "--quick", action="store_true", help="development: 2 rounds, 5 s windows, 3 batch repeats"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--duration", type=int, default=20, help="seconds per window")
    parser.add_argument("--batch-repeats", type=int, default=9)
    parser.add_argument(
        "--skip-mlflow", action="store_true", help="leave `mlflow models serve` out"
    )
    parser.add_argument(
        "--use-champion",
        action="store_true",
        help="benchmark the configured champion instead of var/bench's forest",
    )
    args = parser.parse_args()
    # A terminated benchmark still stops the servers it started (their `finally` blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.rounds, args.duration, args.batch_repeats = 2, 5, 3
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
    bodies = {OURS: work / "one-row.json", "mlserver": work / "one-row-v2.json"}
    bodies[OURS].write_text(json.dumps(_one_row(sample)))
    bodies["mlserver"].write_text(json.dumps(mlserver_export.v2_body(sample.iloc[0].to_numpy())))
    print(f"model {model.uri} ({type(model.model[-1]).__name__}); work dir {work}")
    if args.recording_cost:
        recording_cost(settings, version, bodies[OURS], args.duration, work)
        return
    if args.profile:
        profile_ours(settings, version, bodies[OURS], args.duration, work)
        return
    if args.mlserver_sweep:
        mlserver_sweep(model, bodies["mlserver"], args.duration, work)
        return
    load_start = os.getloadavg()[0]
    results = (
        []
        if args.skip_mlflow
        else bench_mlflow(settings, version, bodies[OURS], args.duration, work)
    )
    rows = sample.sample(BATCH_ROWS, replace=True, random_state=0).reset_index(drop=True)
    measured, batch = interleaved_rounds(settings, version, model, bodies, rows, args, work)
    results += measured
    conditions = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "cores": CORES,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "mlserver": asdict(MLSERVER),
    }
    print_report(results, batch, model.uri, conditions)
    report = (
        settings.var_dir.parent / "reports"
        if settings.var_dir.name == "bench"
        else (settings.var_dir / "reports")
    )
    report.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    (report / "bench_serving.json").write_text(
        json.dumps(
            {
                "model_uri": model.uri,
                "conditions": conditions,
                "windows": [asdict(result) for result in results],
                "summaries": [asdict(summary) for summary in summaries.values()],
                "targets": [asdict(target) for target in targets(summaries)],
                "batch": batch,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {report / 'bench_serving.json'}")


if __name__ == "__main__":
    main()
