"""The gRPC servicer: converts protobuf to domain calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc

from fabula.image.v1 import image_pb2, image_pb2_grpc
from services.image.generator import ImageGenerator
from services.image.params import Action, RawRequest

SERVICE_NAME = image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name

SCHEDULES = {"": image_pb2.NOISE_SCHEDULE_UNSPECIFIED, "native": image_pb2.NOISE_SCHEDULE_NATIVE,
             "karras": image_pb2.NOISE_SCHEDULE_KARRAS, "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL}
MASKED_CONTENT = {"": image_pb2.MASKED_CONTENT_UNSPECIFIED, "original": image_pb2.MASKED_CONTENT_ORIGINAL,
                  "fill": image_pb2.MASKED_CONTENT_FILL, "latent_noise": image_pb2.MASKED_CONTENT_LATENT_NOISE,
                  "latent_nothing": image_pb2.MASKED_CONTENT_LATENT_NOTHING}
_SCHEDULE_NAMES = {value: name for name, value in SCHEDULES.items()}
_CONTENT_NAMES = {value: name for name, value in MASKED_CONTENT.items()}


def _enum_name(table: dict[int, str], value: int) -> str:
    # An enum number this build does not know stays visible, so validation can name it.
    return table.get(value, f"<unknown {value}>")


def raw_request(pb: image_pb2.GenerateRequest) -> RawRequest:
    params = pb.params
    raw = RawRequest(
        model=params.model, prompt=params.prompt, negative_prompt=params.negative_prompt,
        negative_preset=params.negative_preset,
        quality_tags=params.quality_tags if params.HasField("quality_tags") else None,
        width=params.width, height=params.height, steps=params.steps,
        guidance_scale=params.guidance_scale if params.HasField("guidance_scale") else None,
        guidance_rescale=params.guidance_rescale, sampler=params.sampler,
        noise_schedule=_enum_name(_SCHEDULE_NAMES, params.noise_schedule),
        seed=params.seed if params.HasField("seed") else None, n_images=params.n_images,
        preview_every=params.preview_every)
    action = pb.WhichOneof("action")
    if action == "img2img":
        source = pb.img2img
        raw.action, raw.image, raw.extra_noise = Action.IMG2IMG, source.image, source.extra_noise
        raw.strength = source.strength if source.HasField("strength") else None
    elif action == "inpaint":
        source = pb.inpaint
        raw.action, raw.image, raw.mask, raw.mask_blur = Action.INPAINT, source.image, source.mask, source.mask_blur
        raw.strength = source.strength if source.HasField("strength") else None
        raw.masked_content = _enum_name(_CONTENT_NAMES, source.masked_content)
        raw.only_masked = source.only_masked
        raw.only_masked_padding = source.only_masked_padding if source.HasField("only_masked_padding") else None
    elif action == "outpaint":
        source = pb.outpaint
        raw.action, raw.image = Action.OUTPAINT, source.image
        raw.left, raw.right, raw.top, raw.bottom = source.left, source.right, source.top, source.bottom
        raw.mask_blur = source.mask_blur if source.HasField("mask_blur") else None
        raw.strength = source.strength if source.HasField("strength") else None
        raw.masked_content = _enum_name(_CONTENT_NAMES, source.masked_content)
    return raw


class ImageServicer(image_pb2_grpc.ImageServiceServicer):
    def __init__(self, generator: ImageGenerator) -> None:
        self.generator = generator

    async def Generate(self, request: image_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[image_pb2.GenerateResponse]:
        accepted, handle = await self.generator.submit(raw_request(request))
        # Leaving this generator early (client gone, deadline passed) cancels the job in the batch.
        try:
            yield accepted.to_pb()
            async for event in handle:
                yield event.to_pb()
        finally:
            if not handle.finished:
                handle.cancel()

    async def Tokenize(self, request: image_pb2.TokenizeRequest, context) -> image_pb2.TokenizeResponse:
        report = await asyncio.to_thread(self.generator.tokenize, request.model, request.prompt,
                                         request.quality_tags if request.HasField("quality_tags") else False)
        return image_pb2.TokenizeResponse(prompt=report.to_pb(), chunk_tokens=self.generator.chunk_tokens,
                                          max_chunks=self.generator.settings.max_prompt_chunks)

    async def ListModels(self, request: image_pb2.ListModelsRequest, context) -> image_pb2.ListModelsResponse:
        settings = self.generator.settings
        models = []
        for name, pipeline in self.generator.pipelines.items():
            model = pipeline.model
            models.append(image_pb2.ModelInfo(
                name=name, family=model.family, is_default=name == self.generator.default_model,
                default_width=model.defaults.width, default_height=model.defaults.height,
                default_steps=model.defaults.steps, default_guidance_scale=model.defaults.guidance_scale,
                default_sampler=model.defaults.sampler, quality_tags=model.quality_tags,
                quality_tags_position=model.quality_tags_position,
                negative_presets=[image_pb2.NegativePreset(name=k, text=v) for k, v in model.negative_presets.items()],
                default_negative_preset=model.default_negative_preset, inpainting_unet=model.inpainting_unet,
                engine=pipeline.engine.name, hash=model.short_hash))
        samplers = [image_pb2.SamplerInfo(name=spec.name, display_name=spec.display_name,
                                          noise_schedules=[SCHEDULES[s] for s in spec.schedules])
                    for spec in self.generator.samplers.values()]
        return image_pb2.ListModelsResponse(models=models, samplers=samplers, max_pixels=settings.max_pixels,
                                            max_steps=settings.max_steps, max_images=settings.max_images)


def registrar(generator: ImageGenerator):
    """The `register` callback the toolkit's server takes."""

    def register(server: grpc.aio.Server) -> Iterable[str]:
        image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(generator), server)
        return [SERVICE_NAME]

    return register
