"""The caller's W3C trace continues through the gateway into the editor; the API is documented."""

from __future__ import annotations

import importlib.metadata

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.gateway.harness import editor_span_chain, gateway_settings, register_user, serve_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"

CONTRACT = {
    "/user/salt": {"post"}, "/user/register": {"post"}, "/user/login": {"post"}, "/user/logout": {"post"},
    "/user/me": {"get"}, "/user/change-password": {"post"}, "/user/delete": {"post"},
    "/user/keystore": {"get", "put"}, "/user/objects/{type}": {"get"},
    "/user/objects/{type}/{id}": {"get", "put", "delete"}, "/user/export": {"get"}, "/user/import": {"post"},
    "/health": {"get"}, "/health/live": {"get"}, "/metrics": {"get"},
}


@pytest.fixture
def finished_spans():
    """Every span ended during the test, from the gateway and the in-process editor alike."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # What services.toolkit.tracing.setup_tracing installs in a process (without an exporter).
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.mark.parametrize("http_spans", [False, True], ids=["propagation-only", "http-spans"])
async def test_the_callers_trace_reaches_the_editor(editor, finished_spans, http_spans: bool):
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
    settings = gateway_settings(editor.address, trace_http_spans=http_spans)
    async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
        alice = await register_user(client, "alice")
        reply = await client.get("/user/keystore", headers={**alice.headers, "traceparent": traceparent})
        assert reply.status_code == 200

        chain = await editor_span_chain(finished_spans, TRACE_ID, "GetKeystore", 3 if http_spans else 2)

    # editor server span -> gateway client span -> (the gateway's HTTP span ->) the caller's span.
    assert chain[1].kind == SpanKind.CLIENT
    assert chain[-1].parent.span_id == int(CALLER_SPAN_ID, 16)
    http = [span for span in chain[1:] if span.kind == SpanKind.SERVER]
    assert len(http) == int(http_spans)
    if http_spans:
        assert http[0].name.startswith("GET /user/keystore")


async def test_every_route_is_documented_with_public_models_only(client):
    spec = (await client.get("/openapi.json")).json()
    documented = {path: set(methods) for path, methods in spec["paths"].items()}
    for path, methods in CONTRACT.items():
        assert methods <= documented.get(path, set()), path
    for path, methods in documented.items():
        for method in methods:
            assert spec["paths"][path][method].get("summary"), (path, method)

    schemas = spec["components"]["schemas"]
    assert set(schemas["ObjectMeta"]["properties"]) == {"id", "type", "size", "change_index",
                                                        "created_at", "updated_at"}
    assert set(schemas["ObjectWithData"]["properties"]) == set(schemas["ObjectMeta"]["properties"]) | {"data"}
    assert schemas["PutObjectRequest"]["properties"]["data"]["format"] == "byte"
    assert (await client.get("/docs")).status_code == 200


async def test_the_documented_version_is_the_package_version(client):
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["version"] == importlib.metadata.version("fabula")


async def test_a_405_allows_every_method_its_path_is_served_with(client, alice):
    for path, allowed in (("/user/keystore", "GET, PUT"), ("/user/objects/stories/x", "DELETE, GET, PUT"),
                          ("/user/tokens", "GET, POST"), ("/health", "GET")):
        reply = await client.request("PATCH", path, headers=alice.headers)
        assert reply.status_code == 405 and reply.headers["Allow"] == allowed, (path, reply.headers)


async def test_the_document_states_what_the_editor_enforces(client, alice):
    spec = (await client.get("/openapi.json")).json()
    delete = spec["paths"]["/user/objects/{type}/{id}"]["delete"]["parameters"]
    index = next(p for p in delete if p["name"] == "expected_change_index")
    assert index["schema"]["anyOf"][0]["maximum"] == 2**63 - 1
    object_id = next(p for p in delete if p["name"] == "id")
    assert object_id["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    # And the gateway refuses what the document calls invalid, naming the field.
    reply = await client.delete("/user/objects/stories/x", params={"expected_change_index": 2**63},
                                headers=alice.headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "expected_change_index"
    reply = await client.get("/user/objects/stories/bad%20id", headers=alice.headers)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "id"
