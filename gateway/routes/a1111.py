"""AUTOMATIC1111's web UI API (/sdapi/v1/...) for the tools written for it (Krita and Photoshop
plugins, scripts using webuiapi), onto the image service. Bodies and translation are in
gateway/schemas/a1111.py; the running generations are tracked in gateway/image_jobs.py.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
from fastapi import APIRouter, Request

from fabula.image.v1 import image_pb2
from gateway.calls import DisconnectWatch, unary
from gateway.deps import ImageService, RateLimitedUser, Settings
from gateway.errors import from_rpc_error
from gateway.image_jobs import ImageJobs
from gateway.schemas.a1111 import (
    FIELD_PREFIXES,
    Catalogue,
    GenerationAnswer,
    GenerationBody,
    Img2ImgBody,
    ModelItem,
    OptionsAnswer,
    PngInfoAnswer,
    PngInfoBody,
    ProgressAnswer,
    ProgressState,
    SamplerItem,
    Txt2ImgBody,
    generation_answer,
    models_answer,
    options_answer,
    is_png,
    png_info_answer,
    samplers_answer,
    with_signature,
)
from gateway.schemas.common import error_responses

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])
ERRORS = error_responses(400, 401, 429, 503, 504)


def _jobs(request: Request) -> ImageJobs:
    return request.app.state.image_jobs


async def _catalogue(request: Request, image: ImageService, settings: Settings) -> Catalogue:
    reply = await unary(request, image.ListModels(image_pb2.ListModelsRequest(), timeout=settings.request_timeout_s))
    return Catalogue(reply)


async def _generate(body: GenerationBody, request: Request, user_id: str, image: ImageService,
                    settings: Settings) -> GenerationAnswer:
    catalogue = await _catalogue(request, image, settings)
    call = image.Generate(body.to_pb(catalogue), timeout=settings.stream_timeout_s)
    accepted: image_pb2.Accepted | None = None
    images: list[image_pb2.Image] = []
    with _jobs(request).track(user_id, call) as job:
        try:
            async with DisconnectWatch(request, call):
                async for message in call:
                    kind = message.WhichOneof("event")
                    if kind == "accepted":
                        accepted = message.accepted
                    elif kind == "progress":
                        job.step, job.total_steps = message.progress.step, message.progress.total_steps
                        if message.progress.previews:
                            job.preview = message.progress.previews[0]
                    elif kind == "image":
                        images.append(message.image)
        except grpc.aio.AioRpcError as error:
            if not (job.interrupted and error.code() == grpc.StatusCode.CANCELLED):
                raise from_rpc_error(error, FIELD_PREFIXES) from None
        except asyncio.CancelledError:
            # An interrupt cancels the call; A1111 then answers with the images made so far.
            if not job.interrupted:
                raise
    return generation_answer(body, catalogue, accepted, images, job.interrupted)


@router.post("/txt2img", response_model=GenerationAnswer, responses=ERRORS, summary="Text to image (A1111)")
async def txt2img(body: Txt2ImgBody, request: Request, user: RateLimitedUser, image: ImageService,
                  settings: Settings) -> GenerationAnswer:
    return await _generate(body, request, user.user_id, image, settings)


@router.post("/img2img", response_model=GenerationAnswer, responses=ERRORS,
             summary="Image to image, or inpainting with `mask` (A1111)")
async def img2img(body: Img2ImgBody, request: Request, user: RateLimitedUser, image: ImageService,
                  settings: Settings) -> GenerationAnswer:
    return await _generate(body, request, user.user_id, image, settings)


@router.get("/samplers", response_model=list[SamplerItem], responses=error_responses(401, 429, 503),
            summary="The samplers, by A1111's names")
async def samplers(request: Request, user: RateLimitedUser, image: ImageService,
                   settings: Settings) -> list[SamplerItem]:
    return samplers_answer(await _catalogue(request, image, settings))


@router.get("/sd-models", response_model=list[ModelItem], responses=error_responses(401, 429, 503),
            summary="The image models as A1111 checkpoints")
async def sd_models(request: Request, user: RateLimitedUser, image: ImageService,
                    settings: Settings) -> list[ModelItem]:
    return models_answer(await _catalogue(request, image, settings))


@router.get("/options", response_model=OptionsAnswer, responses=error_responses(401, 429, 503),
            summary="The settings A1111 clients read (read-only)")
async def options(request: Request, user: RateLimitedUser, image: ImageService, settings: Settings) -> OptionsAnswer:
    return options_answer(await _catalogue(request, image, settings))


@router.get("/progress", response_model=ProgressAnswer, responses=error_responses(401, 429),
            summary="Progress of the caller's running generation, with a preview of its first image")
async def progress(request: Request, user: RateLimitedUser) -> ProgressAnswer:
    jobs = _jobs(request).running(user.user_id)
    if not jobs:
        return ProgressAnswer(progress=0.0, eta_relative=0.0, current_image=None, textinfo=None,
                              state=ProgressState(interrupted=False, job="", job_count=0, job_timestamp="0",
                                                  job_no=0, sampling_step=0, sampling_steps=0))
    job = jobs[0]
    return ProgressAnswer(
        progress=job.progress, eta_relative=max(0.0, job.eta_s), textinfo=None,
        current_image=base64.b64encode(job.preview).decode("ascii") if job.preview else None,
        state=ProgressState(interrupted=job.interrupted, job=f"job({job.timestamp})", job_count=len(jobs),
                            job_timestamp=job.timestamp, job_no=0, sampling_step=job.step,
                            sampling_steps=job.total_steps))


@router.post("/interrupt", response_model=dict[str, Any], responses=error_responses(401, 429),
             summary="Stop the caller's running generations; they answer with the images finished so far")
async def interrupt(request: Request, user: RateLimitedUser) -> dict[str, Any]:
    return {"interrupted": _jobs(request).interrupt(user.user_id)}


@router.post("/png-info", response_model=PngInfoAnswer, responses=error_responses(400, 401, 429),
             summary="The generation parameters in a PNG (A1111's 'parameters' chunk, Fabula's 'fabula' chunk)")
async def png_info(body: PngInfoBody, request: Request, user: RateLimitedUser, image: ImageService,
                   settings: Settings) -> PngInfoAnswer:
    answer = png_info_answer(body.image)
    if not is_png(body.image):
        return answer
    reply = await unary(request, image.ReadMetadata(image_pb2.ReadMetadataRequest(image=body.image),
                                                    timeout=settings.request_timeout_s))
    return with_signature(answer, reply)
