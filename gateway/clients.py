"""gRPC channels to the services, opened once per app and shared by every request."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc

from fabula.editor.v1 import editor_pb2_grpc
from fabula.image.v1 import image_pb2_grpc
from fabula.text.v1 import text_pb2_grpc
from gateway import channel_policy
from gateway.object_stream import ObjectDataStreams
from gateway.settings import GatewaySettings
from gateway.tracing import records_call_spans
from services.toolkit import tracing
from services.toolkit.callers import TokenSigner, caller_token_interceptors
from services.toolkit.interceptor_kinds import one_per_kind

log = logging.getLogger(__name__)

# Round robin matters in Kubernetes: with a headless Service and a "dns:///" target the channel
# keeps a connection to every replica instead of pinning all calls to the first one it found.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    # Reconnect backoff, one retry of idempotent calls (channel_policy.py).
    *channel_policy.channel_options(),
]


def _open(address: str, audience: str, settings: GatewaySettings, signer: TokenSigner | None) -> grpc.aio.Channel:
    reconnecting = channel_policy.WaitWhileReconnecting()
    interceptors = [*one_per_kind(reconnecting), *tracing.client_interceptors(records_call_spans(settings))]
    if signer is not None:
        interceptors.extend(caller_token_interceptors(signer, audience))
    return reconnecting.attach(grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS,
                                                         interceptors=interceptors))


def _signer(settings: GatewaySettings) -> TokenSigner | None:
    key = settings.caller_signing_key.get_secret_value()
    if not key:
        # Only in development (production refuses to start): services with caller keys will
        # answer these calls UNAUTHENTICATED.
        log.warning("FABULA_GATEWAY_CALLER_SIGNING_KEY is not set: calls to the services go unsigned")
        return None
    return TokenSigner(key, ttl_s=settings.caller_token_ttl_s)


@dataclass
class ServiceChannels:
    """One channel per service and one stub per channel, both built once per app: a stub binds a
    callable per RPC, too much work to repeat per request."""

    editor: grpc.aio.Channel
    text: grpc.aio.Channel
    image: grpc.aio.Channel
    editor_stub: editor_pb2_grpc.EditorServiceStub = field(init=False)
    # The lean /data routes' GetObject and PutObject on long-lived streams (object_stream.py);
    # None: they go by unary call.
    editor_data: ObjectDataStreams | None = field(init=False, default=None)
    text_stub: text_pb2_grpc.TextServiceStub = field(init=False)
    image_stub: image_pb2_grpc.ImageServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.editor_stub = editor_pb2_grpc.EditorServiceStub(self.editor)
        self.text_stub = text_pb2_grpc.TextServiceStub(self.text)
        self.image_stub = image_pb2_grpc.ImageServiceStub(self.image)

    @classmethod
    def open(cls, settings: GatewaySettings) -> ServiceChannels:
        signer = _signer(settings)
        channels = cls(editor=_open(settings.editor_address, "editor", settings, signer),
                       text=_open(settings.text_address, "text", settings, signer),
                       image=_open(settings.image_address, "image", settings, signer))
        if settings.editor_data_streams > 0:
            # A channel of their own, without interceptors: on a streamed call grpc.aio routes every
            # message through a queue and an extra task when the channel has any (about 6 % of the
            # gateway's samples in py-spy). Each message carries what they would add.
            data_channel = grpc.aio.insecure_channel(settings.editor_address, options=_CHANNEL_OPTIONS)
            channels.editor_data = ObjectDataStreams(data_channel, signer,
                                                     record_spans=records_call_spans(settings),
                                                     streams=settings.editor_data_streams,
                                                     max_message_bytes=_MAX_MESSAGE_BYTES,
                                                     in_flight=settings.editor_data_stream_in_flight)
        return channels

    async def close(self) -> None:
        if self.editor_data is not None:
            await self.editor_data.close()
        for channel in (self.editor, self.text, self.image):
            await channel.close()
