"""The README's main job, as a user runs it: `make run` twice, then `make stop`.

The first run trains on the bundled data, promotes version 1, serves it with Ray Serve and starts
the host collector; the second registers a challenger and records the gate's decision, and the
served version follows the champion. All state goes to a temporary VAR_DIR.

Then a row of the fault matrix (docs/reliability.md), folded in here rather than starting a
third local cluster in CI: the whole cluster dies hard (its GCS server and raylet get SIGKILL,
what a crash or `ray stop --force` does; `ray stop --force` itself is not run, as it ends every
Ray cluster on the machine, other test sessions' too), and `mlops serve` alone brings serving
back on the same port with the champion, nothing cleaned up by hand.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient

from serving.local_cluster import ClusterLayout
from tests.conftest import REPO_ROOT
from tests.fixtures.mlflow_server import free_port, wait_http
from tests.resilience.serving_load import report

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.resilience,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
]

MODEL = "mlops-classifier"
MLOPS = str(Path(sys.executable).with_name("mlops"))


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", target],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def served_version(base: str) -> str:
    return str(httpx.get(f"{base}/version", timeout=10).json()["model_version"])


@pytest.fixture
def run_env(tmp_path: Path):
    """A new user's shell: an empty HOME (nothing an earlier run or test left in ~/.ray,
    ~/.cache or ~/.config), none of this session's settings, nor the Ray/HAProxy environment
    the Ray Serve session fixture exports. Only the download cache is shared (content, not
    state), as .ci/run shares it."""
    var_dir = tmp_path / "var"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLOPS_", "RAY_"))
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        {
            "HOME": str(home),
            "CACHE_DIR": os.environ.get("CACHE_DIR", str(Path.home() / ".cache" / "mlops")),
            "VAR_DIR": str(var_dir),
            "MLOPS_TRIALS": "4",  # the README's defaults, with a smaller budget for CI
            "MLOPS_SERVE_PORT": str(free_port()),
            "MLOPS_RAY_DASHBOARD_PORT": str(free_port()),
            "MLOPS_MONITOR_INTERVAL_S": "1",
        }
    )
    yield env, var_dir
    cluster = _cluster_record(var_dir)
    stopped = make("stop", env)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    # Replicas drain and exit within their graceful shutdown (their destructor flushes the
    # telemetry), rather than being force-killed when the controller gives up after 30 s.
    assert "failed to shut down" not in stopped.stdout + stopped.stderr, stopped.stderr[-3000:]
    # `make stop` leaves no Ray process of ours and no listening port behind
    ports = [int(env["MLOPS_SERVE_PORT"]), int(env["MLOPS_RAY_DASHBOARD_PORT"])]
    ports += [value for key, value in cluster.items() if key.endswith("_port")]
    assert not [port for port in ports if _listening(port)]
    assert not _processes_of_cluster(cluster.get("gcs_port"))
    assert not (home / ".ray").exists(), "Ray state was written to the user's home"


def test_make_run_twice_trains_gates_serves_and_monitors(run_env) -> None:
    env, var_dir = run_env
    base = f"http://127.0.0.1:{env['MLOPS_SERVE_PORT']}"

    first = make("run", env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Training summary" in first.stdout and f"{base}/docs" in first.stdout
    wait_http(f"{base}/health", timeout_s=120)
    store = f"sqlite:///{var_dir / 'mlflow.db'}"
    # Both URIs: the registry URI would otherwise follow MLflow's process-wide default.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.get_model_version_by_alias(MODEL, "champion").version in {"1", 1}
    assert served_version(base) == "1"
    row = _demo_row()
    answer = httpx.post(f"{base}/predict", json=row, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] in {"benign", "malignant"}

    second = make("run", env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    challenger = client.get_model_version(MODEL, "2")
    assert challenger.tags["gate.decision"] in {"promoted", "rejected"}
    assert "gate.champion_score" in challenger.tags
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    deadline = time.monotonic() + 180
    while served_version(base) != champion and time.monotonic() < deadline:
        time.sleep(2)
    assert served_version(base) == champion
    _cluster_killed_hard_then_served_again(env, var_dir, base, champion)

    experiment = client.get_experiment_by_name("mlops-chain")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlops.kind` = 'trial'", max_results=100
    )
    assert len(runs) == 8
    cpu_events = var_dir / "log" / "mlops-system.cpu.ndjson"  # the collector make run started
    lines = cpu_events.read_text().splitlines()
    assert lines and 0.0 <= json.loads(lines[-1])["system"]["cpu"]["total"]["norm"]["pct"] <= 1.0


def _cluster_killed_hard_then_served_again(
    env: dict[str, str], var_dir: Path, base: str, champion: str
) -> None:
    """SIGKILL to the cluster's GCS server and raylet; `mlops serve` again serves `champion`
    at `base`, and nothing of the dead cluster is left running (its orphaned HAProxy kept the
    serving port, its dashboard and monitors kept the GCS address alive in their flags)."""
    dead = _cluster_record(var_dir)
    pids = set(_processes_of_cluster(dead["gcs_port"]))
    haproxy_dir = str(ClusterLayout(var_dir / "serve").haproxy_dir)
    old_haproxy = [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "haproxy" and haproxy_dir in " ".join(process.info["cmdline"])
    ]
    assert old_haproxy, "serving is not in HAProxy mode"
    killed = _kill(
        process
        for process in psutil.process_iter(["name"])
        if process.pid in pids and process.info["name"] in {"gcs_server", "raylet"}
    )
    assert sorted(killed) == ["gcs_server", "raylet"], killed
    started = time.monotonic()
    again = subprocess.run(
        [MLOPS, "serve"],
        cwd=REPO_ROOT,
        env={**env, "MLOPS_VAR_DIR": str(var_dir)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.monotonic() - started
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert served_version(base) == champion
    assert _cluster_record(var_dir)["gcs_port"] != dead["gcs_port"]
    assert not _processes_of_cluster(dead["gcs_port"]), "the dead cluster left processes"
    assert not [process.pid for process in old_haproxy if process.is_running()]
    report(
        "cluster_killed_hard",
        killed=killed,
        serve_again_s=round(seconds, 1),
        port=int(env["MLOPS_SERVE_PORT"]),
        served_version=champion,
    )


def _kill(processes: Iterable[psutil.Process]) -> list[str]:
    names = []
    for process in processes:
        process.kill()
        names.append(process.info["name"])
    return names


def _cluster_record(var_dir: Path) -> dict[str, int]:
    path = var_dir / "serve" / "cluster.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _processes_of_cluster(gcs_port: int | None) -> list[int]:
    """Ray's processes with this GCS port in their flags (the GCS server's own included)."""
    flags = (f"--gcs_server_port={gcs_port}",)
    suffix = f":{gcs_port}"
    return [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if any(
            arg in flags
            or (arg.startswith(("--gcs-address=", "--address=")) and arg.endswith(suffix))
            for arg in process.info["cmdline"] or []
        )
    ]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _demo_row() -> dict[str, float]:
    from ml.data import load_dataset

    features = load_dataset("demo", None).X.iloc[0]
    return json.loads(features.to_json())
