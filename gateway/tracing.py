"""Tracing in the gateway: always continue the caller's W3C trace into the gRPC calls; record HTTP
server spans only when they go somewhere.

With an OTLP endpoint (or `trace_http_spans`), OpenTelemetry's FastAPI instrumentation records
a server span per request. Without one, those spans would be built and dropped on every request
(about a third of the gateway's CPU per call, measured with bench/storage.py), so a small
middleware only puts the incoming `traceparent`/`tracestate` into the context; the gRPC client
interceptor (services/toolkit/client_tracing.py) carries it on to the services either way. For
the same reason FastAPI's own native telemetry is turned off then, and the gRPC calls carry the
context without a CLIENT span of their own when this process exports nothing.
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import context, propagate
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.settings import GatewaySettings
from services.toolkit import tracing as toolkit_tracing

_NOT_TRACED = "/health,/metrics"


def records_http_spans(settings: GatewaySettings) -> bool:
    return bool(settings.otlp_endpoint or settings.trace_http_spans)


def records_call_spans(settings: GatewaySettings) -> bool:
    """Whether each gRPC call gets a CLIENT span (its trace context travels either way)."""
    return records_http_spans(settings) or toolkit_tracing.records_spans()


def fastapi_telemetry(settings: GatewaySettings) -> dict:
    """FastAPI's own (native) OpenTelemetry: it records a server span per request whenever a tracer
    provider is installed, exporter or not. Spans, when wanted, come from `instrument` below.

    Its metrics and logs are turned off too: the gateway installs no OpenTelemetry meter or logger
    provider, so they would record nothing, yet with any of the three left on FastAPI asks the
    OpenTelemetry API for every provider (environment look-ups included) on every request, about
    1 % of the gateway's CPU per save (bench/storage.py)."""
    return {} if records_http_spans(settings) else {"tracing": False, "metrics": False, "logs": False}


class TraceContextMiddleware:
    """Attaches the caller's W3C trace context for the length of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        if not carrier:
            await self.app(scope, receive, send)
            return
        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)


def instrument(app: FastAPI, settings: GatewaySettings) -> None:
    if records_http_spans(settings):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # The per-message receive/send spans are noise.
        FastAPIInstrumentor.instrument_app(app, excluded_urls=_NOT_TRACED, exclude_spans=["receive", "send"])
    else:
        app.add_middleware(TraceContextMiddleware)
