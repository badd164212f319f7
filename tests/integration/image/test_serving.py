"""Serving behaviour: validation before work, batching, the bounded queue, cancellation."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import grpc
import pytest
from PIL import Image

from fabula.image.v1 import image_pb2
from fabula_wire import read_error_detail
from tests.integration.image.conftest import collect, images_of, params, png_bytes

IMAGE = png_bytes(Image.new("RGB", (64, 64), (10, 20, 30)))
MASK_32 = png_bytes(Image.new("L", (32, 32), 255))


@pytest.mark.parametrize("request_, field", [
    (image_pb2.GenerateRequest(params=params(width=65)), "params.width"),
    (image_pb2.GenerateRequest(params=params(height=8192)), "params.height"),
    (image_pb2.GenerateRequest(params=params(width=2048, height=2048)), "params.width"),
    (image_pb2.GenerateRequest(params=params(steps=10_000)), "params.steps"),
    (image_pb2.GenerateRequest(params=params(sampler="k_lms_turbo")), "params.sampler"),
    (image_pb2.GenerateRequest(params=params(sampler="euler_ancestral", noise_schedule=2)), "params.noise_schedule"),
    (image_pb2.GenerateRequest(params=params(noise_schedule=9)), "params.noise_schedule"),
    (image_pb2.GenerateRequest(params=params(guidance_scale=float("nan"))), "params.guidance_scale"),
    (image_pb2.GenerateRequest(params=params(guidance_rescale=2.0)), "params.guidance_rescale"),
    (image_pb2.GenerateRequest(params=params(seed=2**40)), "params.seed"),
    (image_pb2.GenerateRequest(params=params(n_images=1000)), "params.n_images"),
    (image_pb2.GenerateRequest(params=params(model="nope")), "params.model"),
    (image_pb2.GenerateRequest(params=params(negative_preset="nope")), "params.negative_preset"),
    (image_pb2.GenerateRequest(params=params(), img2img=image_pb2.ImageToImage(image=b"not an image")), "img2img.image"),
    (image_pb2.GenerateRequest(params=params(), img2img=image_pb2.ImageToImage(image=IMAGE, strength=0)),
     "img2img.strength"),
    (image_pb2.GenerateRequest(params=params(), inpaint=image_pb2.Inpaint(image=IMAGE, mask=MASK_32)), "inpaint.mask"),
    (image_pb2.GenerateRequest(params=params(), inpaint=image_pb2.Inpaint(
        image=IMAGE, mask=png_bytes(Image.new("L", (64, 64), 0)))), "inpaint.mask"),
    (image_pb2.GenerateRequest(params=params(), inpaint=image_pb2.Inpaint(image=IMAGE)), "inpaint.mask"),
    (image_pb2.GenerateRequest(params=params(), inpaint=image_pb2.Inpaint(
        image=IMAGE, mask=png_bytes(Image.new("L", (64, 64), 255)), mask_blur=500)), "inpaint.mask_blur"),
    (image_pb2.GenerateRequest(params=params(), outpaint=image_pb2.Outpaint(image=IMAGE)), "outpaint.left"),
    (image_pb2.GenerateRequest(params=params(), outpaint=image_pb2.Outpaint(image=IMAGE, top=5000)), "outpaint.top"),
], ids=lambda value: value if isinstance(value, str) else "")
async def test_bad_input_is_invalid_argument_naming_the_field(image_service, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(image_service.stub.Generate(request_))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    detail, _ = read_error_detail(raised.value)
    assert detail.field == field
    assert image_service.batcher().unet_calls == 0  # refused before any model work


async def _first_progress(call) -> None:
    async for event in call:
        if event.WhichOneof("event") == "progress":
            return
    raise AssertionError("the call ended before any progress")


async def _wait_idle(service, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if service.batcher().idle:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batcher did not become idle")


async def test_cancelling_the_call_stops_the_denoising_loop(image_service) -> None:
    call = image_service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=150)))
    await _first_progress(call)
    call.cancel()
    await _wait_idle(image_service)
    calls_after_cancel = image_service.batcher().unet_calls
    assert calls_after_cancel < 150
    await asyncio.sleep(0.3)
    assert image_service.batcher().unet_calls == calls_after_cancel


async def test_a_deadline_stops_the_denoising_loop(image_service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=150)), timeout=0.5))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _wait_idle(image_service)
    assert image_service.batcher().unet_calls < 150


async def test_a_full_queue_answers_resource_exhausted(image_service_with) -> None:
    async with image_service_with(max_batch_images=1, max_queue=1) as service:
        running = service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=150)))
        await _first_progress(running)
        waiting = service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=2)))
        assert (await waiting.read()).accepted.queue_position == 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=2))))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        _, retry_after = read_error_detail(raised.value)
        assert retry_after and retry_after >= 1
        running.cancel()
        # Once the running one is gone, the queued one runs to the end.
        rest = []
        while (event := await waiting.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert images_of(rest)


async def test_concurrent_requests_share_unet_calls(image_service) -> None:
    steps = 4
    replies = await asyncio.gather(*[
        collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(seed=seed, steps=steps))))
        for seed in range(4)])
    assert all(len(images_of(reply)) == 1 for reply in replies)
    # Four requests of four steps alone would take 16 UNet calls.
    assert image_service.batcher().unet_calls < 4 * steps


async def test_requests_of_different_sizes_and_samplers_all_finish(image_service) -> None:
    requests = [params(width=64, height=64, sampler="euler"), params(width=128, height=64, sampler="dpmpp_2m"),
                params(width=64, height=64, sampler="dpmpp_2s_ancestral", steps=3),
                params(width=64, height=64, sampler="ddim", guidance_scale=1.0)]
    replies = await asyncio.gather(*[collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=p)))
                                     for p in requests])
    sizes = [(images_of(r)[0].width, images_of(r)[0].height) for r in replies]
    assert sizes == [(64, 64), (128, 64), (64, 64), (64, 64)]


async def test_a_full_queue_refuses_an_upload_before_decoding_it(image_service_with) -> None:
    # The place in the queue is taken before the uploaded image is decoded: with no place left,
    # even an image that would not decode is refused for the queue, not looked at.
    async with image_service_with(max_batch_images=1, max_queue=0) as service:
        running = service.stub.Generate(image_pb2.GenerateRequest(params=params(steps=150)))
        await _first_progress(running)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(service.stub.Generate(image_pb2.GenerateRequest(
                params=params(), img2img=image_pb2.ImageToImage(image=b"not an image"))))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert read_error_detail(raised.value)[0].reason == "QUEUE_FULL"
        running.cancel()
        # With room again, the same upload is looked at, and refused for what it is.
        await _wait_idle(service)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(service.stub.Generate(image_pb2.GenerateRequest(
                params=params(), img2img=image_pb2.ImageToImage(image=b"not an image"))))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
@pytest.mark.parametrize("worker_nice", [0, 10])
async def test_the_denoising_thread_runs_at_the_configured_lower_priority(image_service_with, worker_nice) -> None:
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with image_service_with(worker_nice=worker_nice) as service:
        assert images_of(await collect(service.stub.Generate(image_pb2.GenerateRequest(params=params()))))
        thread = service.batcher()._worker._thread  # the thread that ran the denoising steps
        assert thread is not None and thread.is_alive() and thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(here + worker_nice, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # the event loop's is untouched


def test_a_worker_nice_outside_0_to_19_is_refused(tmp_path) -> None:
    from pydantic import ValidationError

    from services.image.settings import ImageSettings

    assert ImageSettings(cache_dir=tmp_path).worker_nice == 10
    for bad in (-1, 20):
        with pytest.raises(ValidationError, match="worker_nice"):
            ImageSettings(cache_dir=tmp_path, worker_nice=bad)
