"""Prometheus metrics, in one registry the app serves at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "huren_http_requests_total",
    "HTTP requests answered, by route and status class",
    ["route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "huren_http_request_seconds",
    "HTTP request latency by route",
    ["route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
)
UPSTREAM_CALLS = Counter(
    "huren_upstream_calls_total",
    "Calls to facilities' systems, by facility, operation and outcome",
    ["facility", "operation", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "huren_upstream_call_seconds",
    "Latency of calls to facilities' systems",
    ["operation"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
BREAKER_OPEN = Gauge(
    "huren_breaker_open",
    "1 when a facility's circuit breaker is open or half-open",
    ["facility"],
    registry=REGISTRY,
)
QC_LAPSING = Gauge(
    "huren_recognition_qc_lapsing",
    "Facilities whose quality control of a kind covers today and ends within qc_warning_days",
    ["kind"],
    registry=REGISTRY,
)
QC_DAYS_LEFT = Gauge(
    "huren_recognition_qc_days_left",
    "Days until the soonest end of a facility's quality control of a kind that covers today",
    ["kind"],
    registry=REGISTRY,
)
FACILITY_REACHABLE = Gauge(
    "huren_facility_reachable",
    "1 when the last readiness probe reached the facility",
    ["facility"],
    registry=REGISTRY,
)


def set_breaker_state(facility_id: str, state: str) -> None:
    BREAKER_OPEN.labels(facility_id).set(0 if state == "closed" else 1)
