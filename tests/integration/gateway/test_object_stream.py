"""The ObjectData stream between gateway and editor (gateway/object_stream.py,
services/editor/object_stream.py): the same answers as the unary calls, the caller checked on every
message, a request cancelled or timed out on its own, and an editor restart ridden out."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
from google.rpc import status_pb2
import pytest
from opentelemetry.trace import SpanKind

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import STATUS_DETAILS_KEY
from gateway import object_stream
from services.editor.app import EditorApp
from services.editor.embedded import embedded_editor, fast_settings
from services.editor.object_stream import ObjectDataStreams
from services.toolkit.callers import METADATA_KEY, TokenSigner, caller_token_interceptors, new_key_pair
from services.toolkit.server import start_server
from tests.integration.gateway.harness import HttpUser, editor_span_chain, gateway_settings, register_user, serve_gateway
from tests.integration.gateway.test_tracing_and_docs import finished_spans  # noqa: F401 - a fixture

WAIT_S = 15.0


async def _until_streamed(client: httpx.AsyncClient, streams: ObjectDataStreams, user: HttpUser) -> None:
    """Make requests until one is answered on a stream (the first ones go by unary call while the
    gateway opens its streams)."""
    before = streams.served
    deadline = time.monotonic() + WAIT_S
    while streams.served == before:
        assert time.monotonic() < deadline, "the gateway never used its ObjectData stream"
        await client.get("/user/objects/stories/warm-up/data", headers=user.headers)
        await asyncio.sleep(0.05)


async def test_streamed_requests_answer_as_unary_calls_do(editor, gateway, client, alice: HttpUser, bob: HttpUser):
    """The lean routes' 14 cases (tests/integration/gateway/test_objects.py) through a gateway on
    the stream and one on unary calls: the same status, body and headers."""
    streams = editor.app.servicer.object_streams
    await _until_streamed(client, streams, alice)
    unary_settings = gateway.settings.model_copy(update={"editor_data_streams": 0})
    async with serve_gateway(unary_settings) as plain, httpx.AsyncClient(base_url=plain.url) as unary:
        raw = {**alice.headers, "Content-Type": "application/octet-stream"}

        async def both(method: str, path: str, headers: dict[str, str], content: bytes = b"") -> None:
            streamed, called = [await http.request(method, path, headers=headers, content=content)
                                for http in (client, unary)]
            assert (streamed.status_code, streamed.content) == (called.status_code, called.content), (method, path)
            names = ("content-type", "content-length", "retry-after", "x-fabula-change-index",
                     "x-fabula-created-at", "x-fabula-updated-at")
            assert {n: streamed.headers.get(n) for n in names} == {n: called.headers.get(n) for n in names}

        served = streams.served
        for http, id in ((client, "streamed"), (unary, "called")):
            for expected, status in ((0, 201), (1, 200), (1, 409), (0, 409)):
                reply = await http.put(f"/user/objects/stories/{id}/data?expected_change_index={expected}",
                                       content=b"x" * (expected + 5), headers=raw)
                assert reply.status_code == status
        assert streams.served == served + 4  # the streaming gateway's four writes, and only those
        await both("GET", "/user/objects/stories/streamed/data", alice.headers)
        await both("GET", "/user/objects/stories/called/data", alice.headers)
        for method, path, headers, content in (
                ("GET", "/user/objects/stories/absent/data", alice.headers, b""),
                ("GET", "/user/objects/stories/streamed/data", bob.headers, b""),
                ("GET", "/user/objects/lorebooks/streamed/data", alice.headers, b""),
                ("GET", "/user/objects/stories/streamed/data", {"Authorization": "Bearer unknown-token"}, b""),
                ("GET", "/user/objects/stories/streamed/data", {"Authorization": "bearer " + alice.token}, b""),
                ("PUT", "/user/objects/stories/streamed/data?expected_change_index=1", raw, b"stale"),
                ("PUT", "/user/objects/stories/absent/data?expected_change_index=7", raw, b"x"),
                ("PUT", "/user/objects/stories/empty/data?expected_change_index=0", raw, b""),
                ("PUT", f"/user/objects/stories/streamed/data?expected_change_index={2**63}", raw, b"x"),
                ("PUT", "/user/objects/stories/streamed/data?expected_change_index=1",
                 {"Authorization": "Bearer unknown-token"}, b"x")):
            await both(method, path, headers, content)
        # Of the last ten, seven reach the editor (unknown tokens stop at the gateway's sign-in check,
        # an index out of range goes to the FastAPI route): on the stream.
        assert streams.served == served + 4 + 2 + 7


def _outcome(answer: pb.ObjectDataResponse | grpc.aio.AioRpcError) -> tuple[int, str, bytes]:
    if isinstance(answer, grpc.aio.AioRpcError):
        details = dict(answer.trailing_metadata() or ()).get(STATUS_DETAILS_KEY, b"")
        return answer.code().value[0], answer.details(), details
    return answer.code, answer.message, answer.status_details


async def test_the_caller_is_checked_on_every_message(tmp_path):
    """An editor that takes only the gateway: each message of a stream the gateway opened is refused
    or served exactly as the unary call with the same session and caller token."""
    signing, public = new_key_pair()
    stranger, _ = new_key_pair()
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", caller_keys=public, accept_direct_clients=False)
    async with embedded_editor(settings) as editor, \
            serve_gateway(gateway_settings(editor.address, caller_signing_key=signing)) as gateway, \
            httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        alice, bob = await register_user(client, "alice"), await register_user(client, "bob")
        # The gateway's own streams are accepted (opened with its token, each message with the user's).
        await _until_streamed(client, editor.app.servicer.object_streams, alice)
        stored = await client.put("/user/objects/stories/s1/data?expected_change_index=0", content=b"sealed",
                                  headers={**alice.headers, "Content-Type": "application/octet-stream"})
        assert stored.status_code == 201, stored.text
        signer = TokenSigner(signing)
        # The stream is opened as the gateway opens it: signed, for no user.
        async with grpc.aio.insecure_channel(editor.address, interceptors=caller_token_interceptors(
                signer, "editor", user_id="")) as signed, grpc.aio.insecure_channel(editor.address) as bare:
            stub = editor_pb2_grpc.EditorServiceStub(bare)
            stream = editor_pb2_grpc.EditorServiceStub(signed).ObjectData()
            get = pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s1")
            put = pb.PutObjectRequest(type=pb.OBJECT_TYPE_STORY, id="s1", data=b"overwritten", expected_change_index=1)
            cases = [
                ("get_object", alice.token, ""),  # no caller token
                ("get_object", alice.token, TokenSigner(stranger).mint(alice.user_id, "editor")),  # not the gateway's key
                ("get_object", alice.token, signer.mint(alice.user_id, "text")),  # meant for another service
                ("get_object", bob.token, signer.mint(alice.user_id, "editor")),  # signed for another user
                ("put_object", bob.token, signer.mint(alice.user_id, "editor")),
                ("get_object", "unknown-session", signer.mint(alice.user_id, "editor")),
                ("get_object", alice.token, signer.mint(alice.user_id, "editor")),  # served
            ]
            codes = []
            for request_id, (kind, session, caller) in enumerate(cases, start=1):
                message = get if kind == "get_object" else put
                await stream.write(pb.ObjectDataRequest(request_id=request_id, authorization=f"Bearer {session}",
                                                        caller_token=caller, **{kind: message}))
                answer = await asyncio.wait_for(stream.read(), WAIT_S)
                assert answer.request_id == request_id
                metadata = [("authorization", f"Bearer {session}")] + ([(METADATA_KEY, caller)] if caller else [])
                try:
                    called = await getattr(stub, "GetObject" if kind == "get_object" else "PutObject")(
                        message, metadata=metadata)
                except grpc.aio.AioRpcError as error:
                    expected = _outcome(error)
                else:
                    assert getattr(answer, kind) == called
                    expected = (0, "", b"")
                assert _outcome(answer) == expected, (kind, session, caller)
                codes.append(answer.code)
            assert codes == [code.value[0] for code in (
                *[grpc.StatusCode.UNAUTHENTICATED] * 3, *[grpc.StatusCode.PERMISSION_DENIED] * 2,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK)]
            await stream.done_writing()
            # Bob's refused write changed nothing.
            kept = await client.get("/user/objects/stories/s1/data", headers=alice.headers)
            assert (kept.content, kept.headers["x-fabula-change-index"]) == (b"sealed", "1")
            # A stream not opened by the gateway is refused as a whole.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                unsigned = stub.ObjectData()
                await unsigned.write(pb.ObjectDataRequest(request_id=1, authorization=f"Bearer {alice.token}",
                                                          caller_token=signer.mint(alice.user_id, "editor"),
                                                          get_object=get))
                await unsigned.read()
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


class SlowEditor(editor_pb2_grpc.EditorServiceServicer):
    """Authenticate at once; a GetObject of "fast" at once, of any other id never (until cancelled),
    by unary call and on the real ObjectData stream server alike."""

    def __init__(self) -> None:
        self.streams = ObjectDataStreams(self)
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.starts = 0
        self.port = 0

    async def Authenticate(self, request, context):
        return pb.AuthenticateResponse(user_id="user-1", username="slow")

    async def GetObject(self, request, context):
        return await self.get_object(request, "")

    async def get_object(self, request: pb.GetObjectRequest, token: str) -> pb.GetObjectResponse:
        if request.id == "fast":
            return pb.GetObjectResponse(meta=pb.ObjectMeta(id="fast", type=pb.OBJECT_TYPE_STORY), data=b"x")
        self.started.set()
        self.starts += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ObjectData(self, request_iterator, context):
        async for answer in self.streams.serve(request_iterator, context):
            yield answer


@pytest.fixture
def gateway_overrides() -> dict[str, object]:
    return {}


@pytest.fixture
async def slow_stack(gateway_overrides):
    slow = SlowEditor()

    def register(server: grpc.aio.Server) -> list[str]:
        editor_pb2_grpc.add_EditorServiceServicer_to_server(slow, server)
        return ["fabula.editor.v1.EditorService"]

    running = await start_server(register)
    slow.port = running.port
    try:
        settings = gateway_settings(f"127.0.0.1:{running.port}", **{"request_timeout_s": 2.0, **gateway_overrides})
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60.0) as client:
            user = HttpUser(username="slow", auth_key=b"", token="slow-token", user_id="user-1")
            await _until_streamed_fast(client, slow.streams)
            yield slow, client, user
    finally:
        await running.stop(0)


async def _until_streamed_fast(client: httpx.AsyncClient, streams: ObjectDataStreams) -> None:
    deadline = time.monotonic() + WAIT_S
    while streams.served == 0:
        assert time.monotonic() < deadline, "the gateway never used its ObjectData stream"
        reply = await client.get("/user/objects/stories/fast/data", headers={"Authorization": "Bearer slow-token"})
        assert reply.status_code == 200, reply.text
        await asyncio.sleep(0.05)


async def test_a_disconnect_cancels_a_streamed_request(slow_stack):
    slow, client, user = slow_stack
    request = asyncio.create_task(client.get("/user/objects/stories/x/data", headers=user.headers))
    await asyncio.wait_for(slow.started.wait(), WAIT_S)
    served = slow.streams.served
    assert not slow.cancelled.is_set()
    request.cancel()  # httpx drops the connection mid-request
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)
    # The stream carries on for the others.
    reply = await client.get("/user/objects/stories/fast/data", headers=user.headers)
    assert reply.status_code == 200 and slow.streams.served == served + 1


async def test_a_streamed_request_keeps_its_deadline(slow_stack):
    slow, client, user = slow_stack
    started = time.monotonic()
    reply = await client.get("/user/objects/stories/x/data", headers=user.headers)
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert 1.5 < time.monotonic() - started < 10  # request_timeout_s is 2 s
    await asyncio.wait_for(slow.cancelled.wait(), WAIT_S)


@pytest.mark.parametrize("gateway_overrides", [{"editor_data_streams": 1, "editor_data_stream_in_flight": 2,
                                                "request_timeout_s": 20.0}])
async def test_requests_in_flight_are_bounded_per_stream(slow_stack):
    """The gateway sends at most `editor_data_stream_in_flight` requests on a stream; the others
    wait for a slot. The editor refuses a request beyond its own bound without serving it, and
    every request once it drains."""
    slow, client, user = slow_stack
    requests = [asyncio.create_task(client.get("/user/objects/stories/x/data", headers=user.headers))
                for _ in range(3)]
    deadline = time.monotonic() + WAIT_S
    while slow.starts < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert slow.starts == 2  # the third waits in the gateway
    for request in requests:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)

    slow.streams.max_in_flight = 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow.port}") as channel:
        stream = editor_pb2_grpc.EditorServiceStub(channel).ObjectData()
        get = pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id="x")
        for request_id in (1, 2):
            await stream.write(pb.ObjectDataRequest(request_id=request_id, authorization="Bearer t", get_object=get))
        refused = await asyncio.wait_for(stream.read(), WAIT_S)
        assert (refused.request_id, refused.code) == (2, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        # Draining: the stream is told (request_id 0), and a request still arriving is refused unserved.
        slow.streams.drain()
        told = await asyncio.wait_for(stream.read(), WAIT_S)
        assert (told.request_id, told.code) == (0, grpc.StatusCode.UNAVAILABLE.value[0])
        starts = slow.starts
        await stream.write(pb.ObjectDataRequest(request_id=3, authorization="Bearer t", get_object=get))
        late = await asyncio.wait_for(stream.read(), WAIT_S)
        assert (late.request_id, late.code) == (3, grpc.StatusCode.UNAVAILABLE.value[0])
        assert status_pb2.Status.FromString(late.status_details).message == late.message
        assert b"DRAINING" in late.status_details and slow.starts == starts
        stream.cancel()


async def test_a_draining_editor_moves_the_gateway_to_unary_calls(editor, client, alice: HttpUser):
    """A draining editor tells the gateway on each stream, which closes it and opens none while the
    editor drains; requests go by unary call."""
    streams = editor.app.servicer.object_streams
    await _until_streamed(client, streams, alice)
    raw = {**alice.headers, "Content-Type": "application/octet-stream"}
    assert streams.open_streams > 0
    streams.drain()
    served = streams.served
    # Told on the stream itself, the gateway closes its side, and the editor's stream ends.
    deadline = time.monotonic() + WAIT_S
    while streams.open_streams:
        assert time.monotonic() < deadline, "the gateway kept its stream open on a draining editor"
        await asyncio.sleep(0.05)
    for index in range(5):
        saved = await client.put(f"/user/objects/stories/d{index}/data?expected_change_index=0", content=b"x",
                                 headers=raw)
        assert saved.status_code == 201, saved.text
        assert (await client.get(f"/user/objects/stories/d{index}/data", headers=alice.headers)).content == b"x"
        await asyncio.sleep(0.2)  # past the gateway's interval between attempts to open a stream
    assert streams.served == served


async def test_streams_are_renewed_without_losing_a_request(editor, client, alice: HttpUser, monkeypatch):
    """Streams are closed and opened again after MAX_AGE_S (to follow the editor replicas); the
    requests in flight on a closing one are still answered."""
    monkeypatch.setattr(object_stream, "MAX_AGE_S", 0.1)
    streams = editor.app.servicer.object_streams
    await _until_streamed(client, streams, alice)
    opened, served = streams.opened, streams.served
    raw = {**alice.headers, "Content-Type": "application/octet-stream"}

    async def saver(index: int) -> None:
        for round in range(30):
            saved = await client.put(f"/user/objects/stories/r{index}/data?expected_change_index={round}",
                                     content=b"x" * (round + 1), headers=raw)
            assert saved.status_code in (200, 201), saved.text
            await asyncio.sleep(0.01)

    await asyncio.gather(*(saver(index) for index in range(8)))
    assert streams.opened >= opened + 3
    assert streams.served > served + 120  # most on streams; those made while one reopened, by call


async def test_an_editor_restart_is_ridden_out(tmp_path):
    """The editor stops under a gateway whose stream is open: requests are answered 503 at once
    while it is down, and on the stream again once it is back on the same address."""
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")
    app = EditorApp.create(settings)
    await app.open()
    running = await start_server(app.register, "127.0.0.1:0")
    port = running.port
    try:
        async with serve_gateway(gateway_settings(f"127.0.0.1:{port}")) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
            alice = await register_user(client, "alice")
            raw = {**alice.headers, "Content-Type": "application/octet-stream"}
            await _until_streamed(client, app.servicer.object_streams, alice)
            assert (await client.put("/user/objects/stories/s1/data?expected_change_index=0", content=b"one",
                                     headers=raw)).status_code == 201
            await running.stop(0)
            await app.close()
            for _ in range(3):
                started = time.monotonic()
                down = await client.get("/user/objects/stories/s1/data", headers=alice.headers)
                assert down.status_code == 503, down.text
                assert time.monotonic() - started < 3.0
            app = EditorApp.create(settings)
            await app.open()
            running = await start_server(app.register, f"127.0.0.1:{port}")
            deadline = time.monotonic() + WAIT_S
            while (await client.get("/user/objects/stories/s1/data", headers=alice.headers)).status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not find the editor again"
                await asyncio.sleep(0.1)
            await _until_streamed(client, app.servicer.object_streams, alice)
            saved = await client.put("/user/objects/stories/s1/data?expected_change_index=1", content=b"two",
                                     headers=raw)
            assert saved.status_code == 200, saved.text
            assert (await client.get("/user/objects/stories/s1/data", headers=alice.headers)).content == b"two"
    finally:
        await running.stop(0)
        await app.close()


@pytest.mark.parametrize("http_spans", [False, True], ids=["propagation-only", "http-spans"])
async def test_the_callers_trace_reaches_the_editor_on_the_stream(editor, finished_spans, http_spans: bool):
    """As tests/integration/gateway/test_tracing_and_docs.py for a unary call: the editor's span of a
    streamed GetObject sits under the gateway's CLIENT span, in the caller's trace."""
    trace_id, caller_span_id = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8"
    settings = gateway_settings(editor.address, trace_http_spans=http_spans)
    async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30.0) as client:
        alice = await register_user(client, "alice")
        streams = editor.app.servicer.object_streams
        await _until_streamed(client, streams, alice)
        served = streams.served
        reply = await client.get("/user/objects/stories/absent/data",
                                 headers={**alice.headers, "traceparent": f"00-{trace_id}-{caller_span_id}-01"})
        assert reply.status_code == 404 and streams.served == served + 1

        chain = await editor_span_chain(finished_spans, trace_id, "GetObject", 3 if http_spans else 2)

    assert chain[1].kind == SpanKind.CLIENT and chain[1].name.endswith("EditorService/GetObject")
    assert chain[-1].parent.span_id == int(caller_span_id, 16)
    assert len([span for span in chain[1:] if span.kind == SpanKind.SERVER]) == int(http_spans)
