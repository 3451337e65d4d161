"""Ray Serve's own metrics, scraped from Ray's Prometheus endpoint (`--metrics-export-port`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from elk import events

log = logging.getLogger(__name__)

# Prometheus sample name -> our field under `mlops.serve`; summed per application/deployment.
SERVE_METRICS = {
    "ray_serve_num_http_requests_total": "http_requests_total",
    "ray_serve_num_http_error_requests_total": "http_errors_total",
    "ray_serve_http_request_latency_ms_sum": "http_latency_ms_sum",
    "ray_serve_http_request_latency_ms_count": "http_latency_ms_count",
    "ray_serve_deployment_processing_latency_ms_sum": "processing_latency_ms_sum",
    "ray_serve_deployment_processing_latency_ms_count": "processing_latency_ms_count",
    "ray_serve_replica_processing_queries": "replica_processing_queries",
    "ray_serve_deployment_request_counter_total": "deployment_requests_total",
    "ray_serve_deployment_error_counter_total": "deployment_errors_total",
}


def parse_serve_metrics(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """(application, deployment) -> {field: value} from Prometheus exposition text."""
    grouped: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = SERVE_METRICS.get(sample.name)
            if field is None:
                continue
            key = (sample.labels.get("application", ""), sample.labels.get("deployment", ""))
            grouped[key][field] = grouped[key].get(field, 0.0) + float(sample.value)
    return dict(grouped)


class RayServeCollector:
    """One `mlops.serve` document per application/deployment per scrape."""

    name = "ray_serve"

    def __init__(self, metrics_url: str, timeout_s: float = 5.0):
        self.metrics_url = metrics_url
        self.timeout_s = timeout_s
        self._warned = False

    def collect(self) -> list[dict[str, Any]]:
        try:
            response = httpx.get(self.metrics_url, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            if not self._warned:
                log.warning(
                    "Ray metrics at %s unavailable (%s); skipped until they answer",
                    self.metrics_url,
                    exc,
                )
                self._warned = True
            return []
        self._warned = False
        return [
            events.serve_metrics_event(
                values, application=app or None, deployment=deployment or None
            )
            for (app, deployment), values in parse_serve_metrics(response.text).items()
        ]
