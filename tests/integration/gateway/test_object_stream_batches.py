"""Batches on the ObjectData stream (fabula_wire.object_data): requests ready together travel in
one message and answers likewise, each served and answered exactly as alone, only between sides
that announced it, and never in a message larger than the receiver takes."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from fabula.editor.v1 import editor_pb2 as pb
from fabula.editor.v1 import editor_pb2_grpc
from fabula_wire import STATUS_DETAILS_KEY, read_error_detail
from fabula_wire.object_data import BATCH_METADATA_KEY
from gateway import object_stream
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import HttpUser, gateway_settings, register_user, serve_gateway

WAIT_S = 15.0
ANNOUNCE = ((BATCH_METADATA_KEY, str(64 * 1024 * 1024)),)


def _put(user: HttpUser, id: str, data: bytes, request_id: int = 0) -> pb.ObjectDataRequest:
    return pb.ObjectDataRequest(request_id=request_id, authorization=f"Bearer {user.token}", put_object=pb.PutObjectRequest(
        type=pb.OBJECT_TYPE_STORY, id=id, data=data, expected_change_index=0))


def _get(user: HttpUser, id: str, request_id: int = 0) -> pb.ObjectDataRequest:
    return pb.ObjectDataRequest(request_id=request_id, authorization=f"Bearer {user.token}",
                                get_object=pb.GetObjectRequest(type=pb.OBJECT_TYPE_STORY, id=id))


async def _answers(stream: grpc.aio.StreamStreamCall, count: int) -> tuple[list[pb.ObjectDataResponse], int]:
    """The next `count` answers, and how many of the messages they came in carried a batch."""
    answers: list[pb.ObjectDataResponse] = []
    batched = 0
    while len(answers) < count:
        message = await asyncio.wait_for(stream.read(), WAIT_S)
        batched += bool(message.batch)
        answers.extend((message, *message.batch))
    return answers, batched


async def test_a_batch_is_served_as_its_requests_one_by_one(editor, client, alice: HttpUser, bob: HttpUser):
    """One message: its own put, and a batch of another put, a read of an absent object, Bob's read
    of Alice's story, a request with a batch of its own and a request id already in flight. Each is
    answered on its own, as its unary call would be."""
    stored = await client.put("/user/objects/stories/kept/data?expected_change_index=0", content=b"alice's",
                              headers={**alice.headers, "Content-Type": "application/octet-stream"})
    assert stored.status_code == 201
    async with grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        stream = stub.ObjectData(metadata=ANNOUNCE)
        accepted = dict(await stream.initial_metadata())
        assert accepted[BATCH_METADATA_KEY] == str(editor.app.settings.max_message_bytes)
        nested = _get(alice, "kept", 5)
        nested.batch.append(_get(alice, "kept", 6))
        message = _put(alice, "one", b"first", 1)
        message.batch.extend([_put(alice, "two", b"second", 2), _get(alice, "absent", 3), _get(bob, "kept", 4),
                              nested, _get(alice, "kept", 1)])
        await stream.write(message)
        answered, _ = await _answers(stream, 6)
        await stream.done_writing()

        # Id 1 twice: the put, and the refusal of the second request that reused its id.
        ones = sorted((answer for answer in answered if answer.request_id == 1), key=lambda answer: answer.code)
        assert [answer.code for answer in ones] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
        assert ones[0].put_object.meta.change_index == 1 and "already in flight" in ones[1].message
        answers = {answer.request_id: answer for answer in answered if answer.request_id != 1}
        assert answers[2].code == 0 and answers[2].put_object.meta.id == "two"
        for request_id, request in ((3, _get(alice, "absent")), (4, _get(bob, "kept"))):
            with pytest.raises(grpc.aio.AioRpcError) as called:
                await stub.GetObject(request.get_object, metadata=[("authorization", request.authorization)])
            assert (answers[request_id].code, answers[request_id].message) == (
                called.value.code().value[0], called.value.details()), request_id
        assert answers[5].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert _refused_field(answers[5]) == "batch"
        assert 6 not in answers  # inside a refused request: never served
    for id, data in (("one", b"first"), ("two", b"second"), ("kept", b"alice's")):
        reply = await client.get(f"/user/objects/stories/{id}/data", headers=alice.headers)
        assert (reply.status_code, reply.content) == (200, data)


def _refused_field(answer: pb.ObjectDataResponse) -> str:
    """The field an answer's ErrorDetail names, read as the gateway reads a call's."""
    error = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata((STATUS_DETAILS_KEY, answer.status_details)),
                                 details=answer.message)
    detail, _ = read_error_detail(error)
    return detail.field


async def test_answers_come_batched_only_to_a_stream_that_announced_it(editor):
    """Sixteen requests that name no call are refused as they are read, so their answers are all
    ready at once: in one message to an opener that announced batches, one a message to one that
    did not (an older gateway). Each is the refusal it would be alone."""
    streams = editor.app.servicer.object_streams
    async with grpc.aio.insecure_channel(editor.address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        for announced, messages in ((False, 16), (True, 1)):
            stream = stub.ObjectData(metadata=ANNOUNCE if announced else ())
            before = streams.answers_in_batches
            message = pb.ObjectDataRequest()
            message.batch.extend(pb.ObjectDataRequest(request_id=i) for i in range(1, 17))
            await stream.write(message)
            answers, batched = await _answers(stream, 16)
            await stream.done_writing()
            assert [answer.request_id for answer in answers] == list(range(1, 17))
            assert {(answer.code, _refused_field(answer)) for answer in answers} == {
                (grpc.StatusCode.INVALID_ARGUMENT.value[0], "call")}
            assert batched == (1 if announced else 0)
            assert streams.answers_in_batches - before == 16 - messages


async def _gateway_stream(address: str) -> tuple[object_stream._Stream, grpc.aio.Channel]:
    """One stream of the gateway's pool (gateway/object_stream.py), opened on `address`."""
    channel = grpc.aio.insecure_channel(address)
    stream = object_stream._Stream(editor_pb2_grpc.EditorServiceStub(channel), 64, lambda: ANNOUNCE)
    deadline = time.monotonic() + WAIT_S
    while not stream.ready:
        assert time.monotonic() < deadline, "the stream never opened"
        stream.open_soon()
        await asyncio.sleep(0.01)
    return stream, channel


async def _save_together(stream: object_stream._Stream, user: HttpUser, prefix: str, count: int,
                         size: int) -> list[pb.ObjectDataResponse]:
    return await asyncio.gather(*(
        stream.request(object_stream._Waiting(), _put(user, f"{prefix}-{i}", bytes([i]) * size), WAIT_S)
        for i in range(count)))


@pytest.mark.parametrize("editor_takes_batches", [True, False])
async def test_the_gateway_batches_requests_ready_together(editor, client, alice: HttpUser, editor_takes_batches):
    """Twelve saves queued while the stream's writer is busy go in fewer messages, to an editor that
    takes batches; to one that does not (an editor before batches), one a message."""
    streams = editor.app.servicer.object_streams
    streams.takes_batches = editor_takes_batches
    stream, channel = await _gateway_stream(editor.address)
    try:
        received, in_batches = streams.messages_received, streams.requests_in_batches
        answers = await _save_together(stream, alice, "together", 12, 1000)
        assert [answer.code for answer in answers] == [0] * 12
        if editor_takes_batches:
            assert streams.messages_received - received < 12
            assert streams.requests_in_batches > in_batches
        else:
            assert streams.messages_received - received == 12
            assert streams.requests_in_batches == in_batches
    finally:
        await stream.close()
        await channel.close()
    for i in range(12):
        reply = await client.get(f"/user/objects/stories/together-{i}/data", headers=alice.headers)
        assert (reply.status_code, reply.content) == (200, bytes([i]) * 1000)


async def test_a_batch_never_exceeds_what_the_editor_takes(tmp_path):
    """An editor that takes (and sends) messages of at most 320 KiB: twelve 64 KiB saves queued
    together go in batches of at most four (a larger message would end the stream with
    RESOURCE_EXHAUSTED), and all are stored; their twelve loads come back in batches as small."""
    settings = fast_settings(f"sqlite:///{tmp_path / 'editor.db'}", max_message_bytes=320 * 1024,
                             max_object_bytes=256 * 1024, max_keystore_bytes=64 * 1024)
    async with embedded_editor(settings) as editor:
        async with serve_gateway(gateway_settings(editor.address)) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as http:
            alice = await register_user(http, "alice")
            streams = editor.app.servicer.object_streams
            stream, channel = await _gateway_stream(editor.address)
            try:
                received = streams.messages_received
                answers = await _save_together(stream, alice, "large", 12, 64 * 1024)
                assert [(answer.code, answer.message) for answer in answers] == [(0, "")] * 12
                assert streams.messages_received - received >= 3  # 12 × 64 KiB in messages of ≤ 320 KiB
                assert streams.requests_in_batches > 0
                # And the answers that carry them back: batched within the editor's own limit too.
                # The loads are held until all twelve are read, so that their answers are ready
                # together (otherwise how many are ready at once depends on timing).
                _hold_loads_until(editor.app.servicer, 12)
                batched = streams.answers_in_batches
                loads = await asyncio.gather(*(stream.request(object_stream._Waiting(), _get(alice, f"large-{i}"),
                                                              WAIT_S) for i in range(12)))
                assert [(load.code, load.get_object.data) for load in loads] == [
                    (0, bytes([i]) * 64 * 1024) for i in range(12)]
                # Four 64 KiB answers fit in 320 KiB, five do not: three messages, nine answers
                # inside another's.
                assert streams.answers_in_batches - batched == 9
            finally:
                await stream.close()
                await channel.close()


def _hold_loads_until(servicer, count: int) -> None:
    """Make the servicer's loads wait, once read, until `count` of them are: they then finish in
    one turn of the event loop, and their answers are ready together."""
    real_get_object = servicer.get_object
    all_read = asyncio.Event()
    read = 0

    async def held_get_object(*args, **kwargs):
        nonlocal read
        reply = await real_get_object(*args, **kwargs)
        read += 1
        if read == count:
            all_read.set()
        async with asyncio.timeout(WAIT_S):  # no task of its own: each load wakes in one step
            await all_read.wait()
        return reply

    servicer.get_object = held_get_object


async def test_many_requests_at_once_through_the_gateway(editor, client, alice: HttpUser):
    """Thirty-two saves, then thirty-two loads, all at once over HTTP: each answered with its own
    story, whatever message it travelled in."""
    streams = editor.app.servicer.object_streams
    deadline = time.monotonic() + WAIT_S
    while streams.served == 0:  # the first requests go by unary call while the streams open
        assert time.monotonic() < deadline, "the gateway never used its ObjectData stream"
        await client.get("/user/objects/stories/warm-up/data", headers=alice.headers)
        await asyncio.sleep(0.05)
    raw = {**alice.headers, "Content-Type": "application/octet-stream"}
    served = streams.served
    saved = await asyncio.gather(*(
        client.put(f"/user/objects/stories/many-{i}/data?expected_change_index=0", content=f"story {i}".encode(),
                   headers=raw) for i in range(32)))
    assert [reply.status_code for reply in saved] == [201] * 32
    loaded = await asyncio.gather(*(client.get(f"/user/objects/stories/many-{i}/data", headers=alice.headers)
                                    for i in range(32)))
    assert [(reply.status_code, reply.content) for reply in loaded] == [(200, f"story {i}".encode())
                                                                        for i in range(32)]
    assert streams.served == served + 64  # all on the streams


async def test_a_fault_while_writing_sends_the_requests_by_unary_call(editor, alice: HttpUser, monkeypatch):
    """A fault in the writer (here: putting a batch together fails once) loses no request: those
    it held are handed back to go by unary call, the stream is closed, and the next one opened
    serves as before."""
    stream, channel = await _gateway_stream(editor.address)
    real_take_batch = object_stream.take_batch

    ready_after_the_fault: list[bool] = []

    def failing_once(*args):
        monkeypatch.setattr(object_stream, "take_batch", real_take_batch)
        # Asked right after the writer has handled its fault, before the reader can have seen the
        # cancelled call end (that comes through gRPC's poller, later in the event loop).
        asyncio.get_running_loop().call_soon(lambda: ready_after_the_fault.append(stream.ready))
        raise RuntimeError("a fault of the writer")

    monkeypatch.setattr(object_stream, "take_batch", failing_once)
    try:
        outcomes = await asyncio.gather(*(
            stream.request(object_stream._Waiting(), _put(alice, f"fault-{i}", b"x"), WAIT_S) for i in range(3)),
            return_exceptions=True)
        assert [type(outcome) for outcome in outcomes] == [object_stream._NoConnection] * 3
        # The broken connection is never offered again, even before its reader has seen the call end.
        assert ready_after_the_fault == [False]
        deadline = time.monotonic() + WAIT_S
        while not stream.ready:
            assert time.monotonic() < deadline, "the stream was never opened again"
            stream.open_soon()
            await asyncio.sleep(0.01)
        answer = await stream.request(object_stream._Waiting(), _put(alice, "after", b"y"), WAIT_S)
        assert answer.code == 0
    finally:
        await stream.close()
        await channel.close()
