"""Collectors against the real machine (psutil) and pure parsers (Prometheus text, docker stats)."""

from __future__ import annotations

import time
from pathlib import Path

from elk.collectors.containers import DockerCollector, cpu_fraction, memory_usage
from elk.collectors.host import HostCollector, process_role
from elk.collectors.ray_serve import RayServeCollector, parse_serve_metrics
from elk.collectors.training import attach_stage_events

PROMETHEUS_TEXT = """\
# HELP ray_serve_num_http_requests_total The number of HTTP requests processed.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{application="mlops",method="POST",route="/predict",status_code="200"} 40.0
ray_serve_num_http_requests_total{application="mlops",method="POST",route="/predict",status_code="422"} 2.0
# HELP ray_serve_http_request_latency_ms The end-to-end latency of HTTP requests
# TYPE ray_serve_http_request_latency_ms histogram
ray_serve_http_request_latency_ms_bucket{application="mlops",le="5.0"} 30.0
ray_serve_http_request_latency_ms_bucket{application="mlops",le="+Inf"} 42.0
ray_serve_http_request_latency_ms_count{application="mlops"} 42.0
ray_serve_http_request_latency_ms_sum{application="mlops"} 210.0
# HELP ray_serve_replica_processing_queries The current number of queries being processed.
# TYPE ray_serve_replica_processing_queries gauge
ray_serve_replica_processing_queries{application="mlops",deployment="Model",replica="a"} 1.0
ray_serve_replica_processing_queries{application="mlops",deployment="Model",replica="b"} 2.0
# HELP ray_node_cpu_utilization unrelated
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{ip="127.0.0.1"} 12.0
"""  # noqa: E501


def test_host_collector_reads_the_real_machine() -> None:
    collector = HostCollector(["python", "pytest"])
    time.sleep(0.2)
    collected = collector.collect()
    datasets = {event["event"]["dataset"] for event in collected}
    assert {"system.cpu", "system.load", "system.memory", "system.filesystem"} <= datasets
    cpu = next(event for event in collected if event["event"]["dataset"] == "system.cpu")
    assert 0.0 <= cpu["system"]["cpu"]["total"]["norm"]["pct"] <= 1.0
    memory = next(event for event in collected if event["event"]["dataset"] == "system.memory")
    assert 0.0 < memory["system"]["memory"]["actual"]["used"]["pct"] < 1.0
    # this very pytest process is one of "ours" for these words
    processes = [event for event in collected if event["event"]["dataset"] == "system.process"]
    assert any(
        event["process"]["pid"] > 0 and event["system"]["process"]["memory"]["rss"]["bytes"] > 0
        for event in processes
    )


def test_process_roles_from_command_lines() -> None:
    assert process_role("ray::ServeReplica:mlops:Model") == "serving"
    assert process_role("/venv/bin/mlops pipeline --trials 3") == "training"
    assert process_role("python -m mlflow server") == "tracking"
    assert process_role("/venv/bin/mlops monitor run") == "monitor"


def test_docker_without_a_daemon_warns_once_and_yields_nothing(caplog, monkeypatch) -> None:
    """No Docker engine runs here: the real SDK fails to connect, the collector carries on."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    collector = DockerCollector()
    assert collector.collect() == [] and collector.collect() == []
    warnings = [record for record in caplog.records if "no docker daemon" in record.getMessage()]
    assert len(warnings) == 1


def test_docker_stats_arithmetic_matches_docker_stats() -> None:
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000}, "system_cpu_usage": 20_000_000},
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000}, "system_cpu_usage": 10_000_000},
        "memory_stats": {"usage": 300, "limit": 1000, "stats": {"inactive_file": 100}},
    }
    assert cpu_fraction(stats) == 0.1
    assert memory_usage(stats) == (200, 1000)
    assert cpu_fraction({}) == 0.0


def test_serve_metrics_are_summed_per_application_and_deployment() -> None:
    grouped = parse_serve_metrics(PROMETHEUS_TEXT)
    assert grouped[("mlops", "")]["http_requests_total"] == 42.0
    assert grouped[("mlops", "")]["http_latency_ms_sum"] == 210.0
    assert grouped[("mlops", "")]["http_latency_ms_count"] == 42.0
    assert grouped[("mlops", "Model")]["replica_processing_queries"] == 3.0
    assert all("cpu" not in field for values in grouped.values() for field in values)


def test_unreachable_ray_metrics_yield_nothing(tmp_path: Path) -> None:
    from tests.fixtures.mlflow_server import free_port

    collector = RayServeCollector(f"http://127.0.0.1:{free_port()}/metrics", timeout_s=1)
    assert collector.collect() == []


def test_stage_log_records_become_stage_events() -> None:
    import logging

    handler = attach_stage_events()
    handler.drain()
    logging.getLogger("ml.stages").info(
        "stage x done",
        extra={"mlops_stage": "train", "mlops_status": "success", "mlops_duration_s": 1.5},
    )
    logging.getLogger("ml.stages").info("unrelated line")
    (event,) = handler.drain()
    assert event["mlops"]["stage"] == {"name": "train", "status": "success", "duration_s": 1.5}
    assert attach_stage_events() is handler  # attached once


def test_the_pipelines_stages_reach_the_collector() -> None:
    """ml announces on the logger elk subscribes to (one shared name, ml.common.stages)."""
    from ml.pipeline import stage

    handler = attach_stage_events()
    handler.drain()
    timings: dict[str, float] = {}
    with stage("tune", timings):
        pass
    started, finished = handler.drain()
    assert started["mlops"]["stage"]["status"] == "started"
    assert finished["mlops"]["stage"]["name"] == "tune"
    assert finished["mlops"]["stage"]["status"] == "success"
