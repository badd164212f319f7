"""OpenTelemetry tracing: W3C trace context is always propagated; spans are exported over OTLP
only when an endpoint is configured, so a laptop run pays nothing for it."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)
_configured = False
# Whether this process exports spans: None until setup_tracing runs. A process that never calls it
# (a test, an embedding program) owns its tracer provider itself, so spans are kept for it.
_exporting: bool | None = None


def setup_tracing(service_name: str, otlp_endpoint: str = "") -> None:
    """Install the tracer provider once per process; export only when `otlp_endpoint` is set."""
    global _configured, _exporting
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint:
        # Imported here: the exporter pulls in its own gRPC stubs, unneeded without an endpoint.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        log.info("exporting traces to %s", otlp_endpoint)
    trace.set_tracer_provider(provider)
    _configured = True
    _exporting = bool(otlp_endpoint)


def records_spans() -> bool:
    """Whether spans built in this process can reach anyone: not when the process set up tracing
    itself without an OTLP endpoint. Building and dropping a span per call there cost a sizeable
    share of each storage call's CPU (bench/storage.py)."""
    return _exporting is not False


def server_interceptors() -> list:
    """Interceptors that continue the caller's trace (W3C traceparent in gRPC metadata) in a server
    span; none when spans go nowhere (a service makes no calls onward, so nothing is lost)."""
    if not records_spans():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors(record_spans: bool | None = None) -> list:
    """Interceptors that send the current trace context with every outgoing gRPC call (and keep
    `call.cancel()` working; see client_tracing.py for why not OpenTelemetry's own). The context
    always travels; a CLIENT span per call is recorded only when `record_spans` (default: when
    spans reach anyone, `records_spans()`)."""
    from services.toolkit.client_tracing import TracingClientInterceptor
    from services.toolkit.interceptor_kinds import one_per_kind

    return one_per_kind(TracingClientInterceptor(records_spans() if record_spans is None else record_spans))
