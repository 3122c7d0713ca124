"""Prometheus metrics of a cloud worker; names are what dashboards and alert rules use."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("xz_cloud_requests_total", "Escalated turns taken", ["model_class", "outcome"])
INFLIGHT = Gauge("xz_cloud_inflight", "Escalated turns being generated now")
FIRST_TOKEN = Histogram(
    "xz_cloud_first_token_seconds", "Request received to first token published",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
)
BACKEND_UP = Gauge("xz_cloud_backend_up", "1 while a backend endpoint passes health checks", ["backend"])
BREAKER_OPEN = Gauge("xz_cloud_breaker_open", "1 while a backend's circuit breaker is open", ["backend"])
REJECTED = Counter("xz_cloud_rejected_total", "Requests refused because the worker was at its limit")
CACHE_LOOKUPS = Counter("xz_cloud_cache_lookups_total", "Semantic answer cache lookups", ["result"])
