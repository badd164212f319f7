"""The gRPC servicer: hands requests to the generator and its answers back, through wire.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc

from fabula.image.v1 import image_pb2, image_pb2_grpc
from services.image import wire
from services.image.generator import ImageGenerator
from services.toolkit.callers import caller_user_id

SERVICE_NAME = image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name


class ImageServicer(image_pb2_grpc.ImageServiceServicer):
    def __init__(self, generator: ImageGenerator) -> None:
        self.generator = generator

    async def Generate(self, request: image_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[image_pb2.GenerateResponse]:
        accepted, handle = await self.generator.submit(wire.raw_request_from_pb(request), caller_user_id())
        # Leaving this generator early (client gone, deadline passed) cancels the job in the batch.
        try:
            yield wire.event_to_pb(accepted)
            async for event in handle:
                yield wire.event_to_pb(event)
        finally:
            if not handle.finished:
                handle.cancel()

    async def Tokenize(self, request: image_pb2.TokenizeRequest, context) -> image_pb2.TokenizeResponse:
        report = await asyncio.to_thread(self.generator.tokenize, *wire.tokenize_args_from_pb(request))
        return wire.tokenize_response_to_pb(report, chunk_tokens=self.generator.chunk_tokens,
                                            max_chunks=self.generator.settings.max_prompt_chunks)

    async def PreprocessControl(self, request: image_pb2.PreprocessControlRequest, context
                                ) -> image_pb2.PreprocessControlResponse:
        png, width, height = await asyncio.to_thread(self.generator.preprocess_control,
                                                     *wire.preprocess_args_from_pb(request))
        return wire.preprocess_response_to_pb(png, width, height)

    async def ListModels(self, request: image_pb2.ListModelsRequest, context) -> image_pb2.ListModelsResponse:
        return wire.list_models_response_to_pb(self.generator)

    async def ReadMetadata(self, request: image_pb2.ReadMetadataRequest, context) -> image_pb2.ReadMetadataResponse:
        # Off the event loop: the pixels are decoded and hashed.
        return wire.metadata_to_pb(await asyncio.to_thread(self.generator.read_metadata, request.image))

    async def GetSigningKey(self, request: image_pb2.GetSigningKeyRequest, context) -> image_pb2.SigningKey:
        return wire.signing_key_to_pb(self.generator.signer)

    async def SuggestTags(self, request: image_pb2.SuggestTagsRequest, context) -> image_pb2.SuggestTagsResponse:
        return wire.suggestions_to_pb(self.generator.suggest_tags(request.query, request.limit))


def registrar(generator: ImageGenerator):
    """The `register` callback the toolkit's server takes."""

    def register(server: grpc.aio.Server) -> Iterable[str]:
        image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(generator), server)
        return [SERVICE_NAME]

    return register
