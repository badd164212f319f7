"""Prometheus metrics shared by every service; each service defines its own beside its domain.

The registry is the process-wide default one, so a service's own metrics (queue depth, batch
size, tokens/s, ...) and these appear on the same `/metrics` page.
"""

from __future__ import annotations

import functools
import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "fabula_rpc_requests_total",
    "gRPC calls answered, by outcome",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "fabula_rpc_duration_seconds",
    "Time from the start of a gRPC call to its answer (streams: to the last message)",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


@functools.cache
def _rpc_children(service: str, method: str, code: str) -> tuple[Counter, Histogram]:
    # `labels()` checks and looks up its label values under a lock on every call; the set of
    # (service, method, code) is small and fixed, so each call's children are found once.
    return RPC_REQUESTS.labels(service, method, code), RPC_SECONDS.labels(service, method)


def record_rpc(service: str, method: str, code: str, seconds: float) -> None:
    requests, duration = _rpc_children(service, method, code)
    requests.inc()
    duration.observe(seconds)


def serve_metrics(host: str, port: int) -> None:
    """Expose `/metrics` over HTTP on its own port; port 0 turns it off (as in tests)."""
    if port <= 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
