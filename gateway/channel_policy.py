"""How the gateway's channels ride out a service that restarts, rolls or dies.

- **Reconnecting**: gRPC's default reconnect backoff grows to two minutes, so a service that was
  down for a while would be found again long after it is back. Here the backoff starts at 100 ms
  and never exceeds a second: a gateway retries a dead address about once a second, and answers
  again within about a second of the service's return.
- **A reconnect in progress**: a call made while the channel is in TRANSIENT_FAILURE fails at
  once with UNAVAILABLE, even when the failure was one refused connection during a rolling
  restart (the replacement is already listening). Such a call has not been sent, so waiting for
  the channel is safe for every method, writes and generations included: each call waits up to
  RECONNECT_WAIT_S for the channel to be READY before it starts. A service that stays down is
  still reported as 503 well within a second.
- **Retrying**: a call that failed with UNAVAILABLE is tried once more, after a short pause, only
  where a repeat cannot do anything twice — reads and token checks (RETRYABLE below). Never a
  generation (it may have started, and costs GPU time), never a write (a write whose answer was
  lost may have been applied; repeating it would be refused as stale or answered for a new change).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

RECONNECT_WAIT_S = 0.3
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 1000

# Methods that change nothing (or, for Authenticate, only read a session), by full service name.
RETRYABLE: dict[str, tuple[str, ...]] = {
    "fabula.editor.v1.EditorService": ("GetSalt", "Authenticate", "GetKeystore", "GetObject", "ListObjects",
                                       "ExportAccount"),
    "fabula.text.v1.TextService": ("Tokenize", "Detokenize", "CountTokens", "ListModels", "ListPresets"),
    "fabula.image.v1.ImageService": ("Tokenize", "ListModels"),
}


def service_config() -> str:
    """The channels' gRPC service config: one retry on UNAVAILABLE for the RETRYABLE methods."""
    retry_once = {"maxAttempts": 2, "initialBackoff": "0.1s", "maxBackoff": "0.2s", "backoffMultiplier": 2,
                  "retryableStatusCodes": ["UNAVAILABLE"]}
    names = [{"service": service, "method": method} for service, methods in RETRYABLE.items() for method in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": retry_once}]})


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


class WaitWhileReconnecting(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                            grpc.aio.StreamUnaryClientInterceptor):
    """Holds a call for up to `wait_s` while its channel is in TRANSIENT_FAILURE (see above).

    The channel is attached after it is built (`attach`): interceptors are given to the channel
    at construction. Give the channel `interceptor_kinds.one_per_kind(this)`, not this object:
    a channel would file it under unary calls only.
    """

    def __init__(self, wait_s: float = RECONNECT_WAIT_S) -> None:
        self._wait_s = wait_s
        self._channel: grpc.aio.Channel | None = None

    def attach(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        self._channel = channel
        return channel

    async def _until_ready(self) -> None:
        channel = self._channel
        if channel is None:
            return
        state = channel.get_state()
        if state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return
        try:
            async with asyncio.timeout(self._wait_s):
                while state != grpc.ChannelConnectivity.READY:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state()
        except TimeoutError:
            pass  # still down: the call fails fast with UNAVAILABLE (503)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        await self._until_ready()
        return await continuation(client_call_details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        await self._until_ready()
        return await continuation(client_call_details, request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        await self._until_ready()
        return await continuation(client_call_details, request_iterator)
