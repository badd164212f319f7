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


def setup_tracing(service_name: str, otlp_endpoint: str = "") -> None:
    """Install the tracer provider once per process; export only when `otlp_endpoint` is set."""
    global _configured
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


def server_interceptors() -> list:
    """Interceptors that continue the caller's trace (W3C traceparent in gRPC metadata)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list:
    """Interceptors that send the current trace context with every outgoing gRPC call (and keep
    `call.cancel()` working; see client_tracing.py for why not OpenTelemetry's own)."""
    from services.toolkit.client_tracing import TracingClientInterceptor

    return [TracingClientInterceptor()]
