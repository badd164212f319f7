"""The gRPC servicer: each RPC translates its request with `wire.py`, calls the domain, and wraps
the translated results in the RPC's response messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import grpc

from fabula.text.v1 import text_pb2, text_pb2_grpc
from services.text import wire
from services.text.generator import TextGenerator
from services.toolkit.callers import caller_user_id

SERVICE_NAME = text_pb2.DESCRIPTOR.services_by_name["TextService"].full_name


class TextServicer(text_pb2_grpc.TextServiceServicer):
    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator

    async def Generate(self, request: text_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> text_pb2.GenerateResponse:
        prepared, handle = await self.generator.start(wire.spec_from_pb(request.spec), caller_user_id(),
                                                      _deadline(context))
        async for _ in handle:
            pass
        stats = handle.result
        response = text_pb2.GenerateResponse(
            text=stats.text, token_ids=stats.token_ids, stats=wire.stats_to_pb(stats),
            probabilities=[wire.token_probabilities_to_pb(p) for p in stats.probabilities])
        if prepared.context is not None:
            response.context_report.CopyFrom(wire.context_report_to_pb(prepared.context))
        return response

    async def GenerateStream(self, request: text_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[text_pb2.GenerateStreamResponse]:
        prepared, handle = await self.generator.start(wire.spec_from_pb(request.spec), caller_user_id(),
                                                      _deadline(context))
        if prepared.context is not None:
            yield text_pb2.GenerateStreamResponse(context_report=wire.context_report_to_pb(prepared.context))
        # Leaving this generator early (the client went away, the deadline passed) closes the
        # handle's iterator, which cancels the sequence in the scheduler.
        async for piece in handle:
            yield text_pb2.GenerateStreamResponse(piece=wire.piece_to_pb(piece))
        yield text_pb2.GenerateStreamResponse(final=wire.stats_to_pb(handle.result))

    async def Tokenize(self, request: text_pb2.TokenizeRequest, context) -> text_pb2.TokenizeResponse:
        ids, texts = await asyncio.to_thread(self.generator.tokenize, request.model, request.text)
        return text_pb2.TokenizeResponse(token_ids=ids, token_texts=texts)

    async def Detokenize(self, request: text_pb2.DetokenizeRequest, context) -> text_pb2.DetokenizeResponse:
        text = await asyncio.to_thread(self.generator.detokenize, request.model, list(request.token_ids))
        return text_pb2.DetokenizeResponse(text=text)

    async def CountTokens(self, request: text_pb2.CountTokensRequest, context) -> text_pb2.CountTokensResponse:
        counts = await asyncio.to_thread(self.generator.count_tokens, request.model, list(request.texts))
        return text_pb2.CountTokensResponse(counts=counts)

    async def ListModels(self, request: text_pb2.ListModelsRequest, context) -> text_pb2.ListModelsResponse:
        return text_pb2.ListModelsResponse(models=[
            wire.model_info_to_pb(runtime.model, is_default=name == self.generator.default_model)
            for name, runtime in self.generator.runtimes.items()],
            max_new_tokens=self.generator.limits.max_new_tokens,
            max_prompt_chars=self.generator.limits.max_prompt_chars)

    async def ListPresets(self, request: text_pb2.ListPresetsRequest, context) -> text_pb2.ListPresetsResponse:
        return text_pb2.ListPresetsResponse(presets=[wire.preset_to_pb(preset)
                                                     for preset in self.generator.list_presets()])

    async def ApplyChatTemplate(self, request: text_pb2.ApplyChatTemplateRequest, context
                                ) -> text_pb2.ApplyChatTemplateResponse:
        prompt = await asyncio.to_thread(self.generator.apply_chat_template, request.model,
                                         wire.chat_messages_from_pb(request.messages))
        return text_pb2.ApplyChatTemplateResponse(prompt=prompt)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the `time.monotonic()` clock, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def registrar(generator: TextGenerator):
    """The `register` callback the toolkit's server takes."""

    def register(server: grpc.aio.Server) -> Iterable[str]:
        text_pb2_grpc.add_TextServiceServicer_to_server(TextServicer(generator), server)
        return [SERVICE_NAME]

    return register
