"""Prometheus metrics shared by edge nodes and cloud workers: discovery, registration, supervised children."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DISCOVERY_CHOICES = Counter("xz_discovery_choices_total", "Edges handed to booting devices, by policy step", ["reason"])
DISCOVERY_SNAPSHOT_SERVED = Counter(
    "xz_discovery_snapshot_served_total", "Answers served from the last good snapshot because Consul was unreachable"
)
DISCOVERY_CONSUL_UP = Gauge("xz_discovery_consul_up", "1 while the last Consul health query succeeded")
DISCOVERY_SNAPSHOT_AGE = Gauge("xz_discovery_snapshot_age_seconds", "Age of the edge list discovery answers from")
REGISTRATION_UP = Gauge("xz_registration_up", "1 while this service is registered with Consul", ["service"])
CHILD_UP = Gauge("xz_child_up", "1 while a supervised child process (llm, nats, worker, edge) serves", ["child"])
CHILD_RESTARTS = Counter("xz_child_restarts_total", "Restarts of a supervised child process after it exited",
                         ["child"])
