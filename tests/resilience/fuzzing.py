"""A reflection-driven fuzzer for gRPC services: every method of a service descriptor, called with
empty, random, huge and extreme requests; a call answered INTERNAL or UNKNOWN is a finding.

Requests come from the method's input descriptor, so new methods and fields are covered without
touching this file. Each method may have a *seed*: a valid request that the extreme cases start
from, so that one field at a time is pushed to the limits of its protobuf type (change indexes
near 2**64, negative int64, NaN floats, enum numbers no one defined) while the rest of the request
passes validation and the value reaches the code behind it. Everything is drawn from one seeded
`random.Random`, so a finding replays with the same seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message

FD = pb_descriptor.FieldDescriptor

# The limits of every protobuf scalar type, and the values just past the ones clients usually mean.
EXTREMES: dict[int, list[Any]] = {
    FD.TYPE_INT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    FD.TYPE_SINT32: [0, -1, 2**31 - 1, -(2**31)],
    FD.TYPE_SFIXED32: [0, -1, 2**31 - 1, -(2**31)],
    FD.TYPE_INT64: [0, -1, 2**63 - 1, -(2**63)],
    FD.TYPE_SINT64: [0, -1, 2**63 - 1, -(2**63)],
    FD.TYPE_SFIXED64: [0, -1, 2**63 - 1, -(2**63)],
    FD.TYPE_UINT32: [0, 1, 2**31, 2**32 - 1],
    FD.TYPE_FIXED32: [0, 2**31, 2**32 - 1],
    FD.TYPE_UINT64: [0, 2**63 - 1, 2**63, 2**64 - 1],
    FD.TYPE_FIXED64: [0, 2**63, 2**64 - 1],
    FD.TYPE_FLOAT: [0.0, -0.0, math.inf, -math.inf, math.nan, 3.4e38, -3.4e38, 1e-45],
    FD.TYPE_DOUBLE: [0.0, math.inf, -math.inf, math.nan, 1.7e308, -1.7e308, 5e-324],
    FD.TYPE_BOOL: [True, False],
}
NUMERIC_TYPES = set(EXTREMES) - {FD.TYPE_BOOL}
HUGE_TEXT_CHARS = 200_000
HUGE_BYTES = 1024 * 1024
FAILURE_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass
class Finding:
    method: str
    case: str
    code: str
    details: str


@dataclass
class FuzzReport:
    calls: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Target:
    """One service to fuzz: its descriptor, a channel to it, and how to call it signed in."""

    service: pb_descriptor.ServiceDescriptor
    channel: grpc.aio.Channel
    seeds: dict[str, Message] = field(default_factory=dict)
    metadata: Callable[[str], Awaitable[tuple[tuple[str, str], ...]]] | None = None
    """Metadata for a call of the named method (the signed-in user's token); called before each call."""


def message_class(descriptor: pb_descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def random_scalar(rng: random.Random, fd: pb_descriptor.FieldDescriptor) -> Any:
    if fd.type == FD.TYPE_ENUM:
        numbers = [value.number for value in fd.enum_type.values]
        return rng.choice([*numbers, *numbers, 2**31 - 1, -1, -(2**31), rng.randint(-1000, 1000)])
    if fd.type == FD.TYPE_STRING:
        return rng.choice(["", "a", "fuzz", "\x00", "\u202e\u0301é🙂", "../../etc/passwd", "x" * 300,
                           "y" * HUGE_TEXT_CHARS, "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(40))])
    if fd.type == FD.TYPE_BYTES:
        return rng.choice([b"", b"\x00", rng.randbytes(16), rng.randbytes(32), rng.randbytes(4096),
                           rng.randbytes(HUGE_BYTES)])
    values = EXTREMES[fd.type]
    if fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return rng.choice([*values, rng.uniform(-10, 10), rng.uniform(0, 1)])
    if fd.type == FD.TYPE_BOOL:
        return rng.choice(values)
    low, high = min(values), max(values)
    return rng.choice([*values, rng.randint(low, high), rng.randint(0, 100)])


def _set(message: Message, fd: pb_descriptor.FieldDescriptor, value: Any) -> None:
    if fd.is_repeated:
        getattr(message, fd.name).append(value)
    else:
        setattr(message, fd.name, value)


def fill_random(message: Message, rng: random.Random, depth: int = 0, density: float = 0.5) -> Message:
    """Set a random subset of `message`'s fields (recursively, a few levels deep) to random values."""
    for fd in message.DESCRIPTOR.fields:
        if rng.random() > density:
            continue
        if fd.message_type is not None:
            if depth >= 3 or fd.message_type.GetOptions().map_entry:
                continue
            if fd.message_type.full_name.startswith("google.protobuf."):
                continue
            count = rng.choice([1, 1, 2, 40]) if fd.is_repeated else 1
            for _ in range(count):
                child = getattr(message, fd.name).add() if fd.is_repeated else getattr(message, fd.name)
                if not fd.is_repeated:
                    child.SetInParent()
                fill_random(child, rng, depth + 1, density)
            continue
        count = rng.choice([1, 1, 3, 300]) if fd.is_repeated else 1
        for _ in range(count):
            _set(message, fd, random_scalar(rng, fd))
    return message


FieldPath = tuple[pb_descriptor.FieldDescriptor, ...]


def numeric_paths(descriptor: pb_descriptor.Descriptor, depth: int = 0, prefix: FieldPath = ()) -> Iterator[FieldPath]:
    """Every path from the request to a numeric or enum field, a few message levels deep."""
    for fd in descriptor.fields:
        path = (*prefix, fd)
        if fd.message_type is not None:
            if depth < 3 and not fd.message_type.GetOptions().map_entry \
                    and not fd.message_type.full_name.startswith("google.protobuf."):
                yield from numeric_paths(fd.message_type, depth + 1, path)
        elif fd.type in NUMERIC_TYPES or fd.type == FD.TYPE_ENUM:
            yield path


def with_value(seed: Message, path: FieldPath, value: Any) -> Message:
    """A copy of `seed` with the field at `path` set to `value` (repeated fields get one element)."""
    request = type(seed)()
    request.CopyFrom(seed)
    node = request
    for fd in path[:-1]:
        if fd.is_repeated:
            container = getattr(node, fd.name)
            node = container[0] if len(container) else container.add()
        else:
            node = getattr(node, fd.name)
            node.SetInParent()
    _set(node, path[-1], value)
    return request


def extreme_values(fd: pb_descriptor.FieldDescriptor) -> list[Any]:
    if fd.type == FD.TYPE_ENUM:
        return [2**31 - 1, -1, -(2**31), max(value.number for value in fd.enum_type.values) + 1]
    return EXTREMES[fd.type]


def cases(method: pb_descriptor.MethodDescriptor, seed: Message | None, rng: random.Random,
          random_count: int) -> Iterator[tuple[str, Message]]:
    """The requests for one method: empty, the seed, each numeric field at each extreme, random."""
    cls = message_class(method.input_type)
    yield "empty", cls()
    if seed is not None:
        yield "seed", seed
        for path in numeric_paths(method.input_type):
            for value in extreme_values(path[-1]):
                yield f"{'.'.join(fd.name for fd in path)}={value!r}", with_value(seed, path, value)
    for number in range(random_count):
        base = cls()
        if seed is not None and number % 2 == 0:
            base.CopyFrom(seed)
        yield f"random#{number}", fill_random(base, rng)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def call_once(channel: grpc.aio.Channel, service: str, method: pb_descriptor.MethodDescriptor,
                    request: Message, metadata: tuple[tuple[str, str], ...],
                    timeout_s: float) -> tuple[grpc.StatusCode, str]:
    """Call `method` with `request`; its status and details (streams: a few messages, then cancel)."""
    path = f"/{service}/{method.name}"
    response_class = message_class(method.output_type)
    serialize, deserialize = type(request).SerializeToString, response_class.FromString
    try:
        if method.client_streaming:
            async def one() -> Any:
                yield request

            if method.server_streaming:
                call = channel.stream_stream(path, serialize, deserialize)(one(), metadata=metadata,
                                                                           timeout=timeout_s)
            else:
                await channel.stream_unary(path, serialize, deserialize)(one(), metadata=metadata,
                                                                         timeout=timeout_s)
                return grpc.StatusCode.OK, ""
        elif method.server_streaming:
            call = channel.unary_stream(path, serialize, deserialize)(request, metadata=metadata, timeout=timeout_s)
        else:
            await channel.unary_unary(path, serialize, deserialize)(request, metadata=metadata, timeout=timeout_s)
            return grpc.StatusCode.OK, ""
        try:
            for _ in range(3):
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                # A stream whose messages each carry a status (the editor's ObjectData): that
                # status is the answer to the request, judged as a call's would be.
                if "status_details" in reply.DESCRIPTOR.fields_by_name and reply.code:
                    return _CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message
        finally:
            call.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""


def _interleaved(per_method: list[Iterator[Any]]) -> Iterator[Any]:
    """Round robin over the methods, so a time budget cuts every method short, not the last ones."""
    live = list(per_method)
    while live:
        for iterator in list(live):
            try:
                yield next(iterator)
            except StopIteration:
                live.remove(iterator)


async def fuzz(targets: list[Target], *, seed: int = 0, random_per_method: int = 12, max_calls: int = 3000,
               time_budget_s: float = 120.0, call_timeout_s: float = 15.0, whole_rounds: int = 0) -> FuzzReport:
    """Fuzz every method of every target; stops after `max_calls` calls or `time_budget_s`. The
    first `whole_rounds` rounds (a call to each method) run whatever the time budget, so a slow
    machine reaches every method as often as a fast one; each call is bounded by `call_timeout_s`."""
    rng = random.Random(seed)
    report = FuzzReport()
    def plan(target: Target, method: pb_descriptor.MethodDescriptor) -> Iterator[tuple[Target, Any, str, Message]]:
        for name, request in cases(method, target.seeds.get(method.name), rng, random_per_method):
            yield target, method, name, request

    plans = [plan(target, method) for target in targets for method in target.service.methods]
    deadline = time.monotonic() + time_budget_s
    guaranteed = whole_rounds * len(plans)
    for target, method, name, request in _interleaved(plans):
        if report.calls >= max_calls or (report.calls >= guaranteed and time.monotonic() > deadline):
            break
        metadata = await target.metadata(method.name) if target.metadata else ()
        code, details = await call_once(target.channel, target.service.full_name, method, request, metadata,
                                        call_timeout_s)
        report.calls += 1
        report.codes[code.name] = report.codes.get(code.name, 0) + 1
        if code in FAILURE_CODES:
            report.findings.append(Finding(f"{target.service.name}.{method.name}", name[:120], code.name,
                                           details[:300]))
    return report

