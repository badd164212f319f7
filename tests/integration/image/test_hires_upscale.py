"""Hires fix, the upscale, enhance and variations actions, over gRPC on the tiny model; the
spandrel path with a tiny random ESRGAN saved by the test."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from fabula.image.v1 import image_pb2
from services.image.images import parse_parameters
from services.image.upscale import Upscalers, _import_spandrel
from tests.integration.image.conftest import collect, decode, images_of, noise_image, params, png_bytes
from fabula_wire import read_error_detail


@pytest.fixture(scope="module")
def esrgan_file(tmp_path_factory):
    """A tiny random ESRGAN (RRDBNet, x2), saved the way model sites distribute them (.pth)."""
    _import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    network = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    path = tmp_path_factory.mktemp("upscalers") / "tiny-esrgan-x2.pth"
    torch.save(network.state_dict(), path)
    return path


async def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(call)
    detail, _ = read_error_detail(caught.value)
    return caught.value.code(), detail.field


async def test_hires_fix_runs_two_passes_at_the_larger_size(image_service) -> None:
    request = image_pb2.GenerateRequest(params=params(steps=3, hires=image_pb2.HiresFix(scale=2, steps=2,
                                                                                         strength=0.5)))
    events = await collect(image_service.stub.Generate(request))
    progress = [event.progress for event in events if event.WhichOneof("event") == "progress"]
    # 3 first-pass steps, then int(2 * 0.5) = 1 second-pass step; progress counts both.
    assert [(p.step, p.total_steps) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (image,) = images_of(events)
    assert (image.width, image.height) == (128, 128) and decode(image.png).size == (128, 128)
    assert (events[0].accepted.width, events[0].accepted.height) == (128, 128)
    _, _, fields = parse_parameters(image.parameters)
    assert fields["Size"] == "64x64" and fields["Hires resize"] == "128x128" and fields["Hires steps"] == "2"
    assert fields["Hires upscaler"] == "Latent" and fields["Denoising strength"] == "0.5"
    again = images_of(await collect(image_service.stub.Generate(request)))[0]
    assert again.png == image.png  # same seed, same two passes
    single = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(steps=3, width=128, height=128)))))[0]
    assert single.png != image.png


async def test_hires_with_an_image_upscaler_differs_from_latent(image_service) -> None:
    latent = image_pb2.GenerateRequest(params=params(hires=image_pb2.HiresFix(width=128, steps=2)))
    lanczos = image_pb2.GenerateRequest(params=params(hires=image_pb2.HiresFix(width=128, steps=2,
                                                                               upscaler="lanczos")))
    first = images_of(await collect(image_service.stub.Generate(latent)))[0]
    second = images_of(await collect(image_service.stub.Generate(lanczos)))[0]
    assert (second.width, second.height) == (128, 128)  # height follows the aspect
    assert first.png != second.png


@pytest.mark.parametrize("hires, field", [
    (image_pb2.HiresFix(scale=9), "params.hires.scale"),
    (image_pb2.HiresFix(width=100), "params.hires.width"),
    (image_pb2.HiresFix(width=64 * 40, height=64 * 40), "params.hires.width"),
    (image_pb2.HiresFix(scale=2, strength=1.5), "params.hires.strength"),
    (image_pb2.HiresFix(scale=2, steps=100000), "params.hires.steps"),
    (image_pb2.HiresFix(scale=2, upscaler="nope"), "params.hires.upscaler"),
])
async def test_hires_refuses_bad_values_naming_the_field(image_service, hires, field) -> None:
    code, named = await refused(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(hires=hires))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and named == field


async def test_hires_is_for_text_to_image_only(image_service) -> None:
    request = image_pb2.GenerateRequest(params=params(hires=image_pb2.HiresFix(scale=2)),
                                        img2img=image_pb2.ImageToImage(image=png_bytes(noise_image())))
    assert await refused(image_service.stub.Generate(request)) == (grpc.StatusCode.INVALID_ARGUMENT, "params.hires")


async def test_upscale_with_lanczos_and_the_area_rule(image_service) -> None:
    source = noise_image()
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(), upscale=image_pb2.Upscale(image=png_bytes(source), scale=3))))
    assert [event.WhichOneof("event") for event in events] == ["accepted", "image", "finished"]
    (image,) = images_of(events)
    assert decode(image.png).size == (192, 192)
    expected = np.asarray(source.resize((192, 192), Image.LANCZOS))
    assert np.array_equal(np.asarray(decode(image.png).convert("RGB")), expected)
    too_big = image_pb2.GenerateRequest(params=params(), upscale=image_pb2.Upscale(image=png_bytes(source),
                                                                                   width=4096, height=4096))
    assert await refused(image_service.stub.Generate(too_big)) == (grpc.StatusCode.INVALID_ARGUMENT, "upscale.width")
    not_image = image_pb2.GenerateRequest(params=params(), upscale=image_pb2.Upscale(image=b"not a picture"))
    assert await refused(image_service.stub.Generate(not_image)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                     "upscale.image")
    unknown = image_pb2.GenerateRequest(params=params(), upscale=image_pb2.Upscale(image=png_bytes(source),
                                                                                   upscaler="esrgan"))
    assert await refused(image_service.stub.Generate(unknown)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                   "upscale.upscaler")


async def test_upscaler_model_through_spandrel(image_service_with, esrgan_file) -> None:
    async with image_service_with(upscalers={"tiny-esrgan": str(esrgan_file)}, upscaler_tile=32) as running:
        listed = await running.stub.ListModels(image_pb2.ListModelsRequest())
        assert list(listed.upscalers) == ["lanczos", "tiny-esrgan"]
        source = noise_image()
        events = await collect(running.stub.Generate(image_pb2.GenerateRequest(
            params=params(), upscale=image_pb2.Upscale(image=png_bytes(source), scale=2, upscaler="tiny-esrgan"))))
        upscaled = decode(images_of(events)[0].png).convert("RGB")
        assert upscaled.size == (128, 128)
        # The model's own output, run here directly on the whole image: tiling changes nothing.
        descriptor = running.generator.upscalers.models["tiny-esrgan"].descriptor
        with torch.inference_mode():
            pixels = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            direct = (descriptor(pixels).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.abs(np.asarray(upscaled).astype(int) - direct.astype(int)).max() <= 1
        assert not np.array_equal(np.asarray(upscaled), np.asarray(source.resize((128, 128), Image.LANCZOS)))
        hires = images_of(await collect(running.stub.Generate(image_pb2.GenerateRequest(
            params=params(hires=image_pb2.HiresFix(scale=2, steps=2, upscaler="tiny-esrgan"))))))[0]
        assert decode(hires.png).size == (128, 128)


def test_a_file_that_is_not_a_model_is_refused(tmp_path) -> None:
    from services.image.upscale import UpscalerError

    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a model")
    with pytest.raises(UpscalerError, match="broken"):
        Upscalers.load({"broken": path}, torch.device("cpu"))
    script = tmp_path / "model.pt"
    script.write_bytes(b"anything")
    with pytest.raises(UpscalerError, match=r"must be a \.pth"):
        Upscalers.load({"script": script}, torch.device("cpu"))
    with pytest.raises(UpscalerError, match="no file"):
        Upscalers.load({"missing": tmp_path / "missing.pth"}, torch.device("cpu"))


async def test_enhance_enlarges_and_redraws_lightly(image_service) -> None:
    source = noise_image()
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(steps=4), enhance=image_pb2.Enhance(image=png_bytes(source), scale=2, strength=0.5))))
    (image,) = images_of(events)
    assert (image.width, image.height) == (128, 128)
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert progress[-1].total_steps == 2  # int(4 * 0.5)
    _, _, fields = parse_parameters(image.parameters)
    assert fields["Fabula action"] == "enhance" and fields["Denoising strength"] == "0.5"
    too_big = image_pb2.GenerateRequest(params=params(), enhance=image_pb2.Enhance(image=png_bytes(
        Image.new("RGB", (1024, 1024))), scale=2))
    assert await refused(image_service.stub.Generate(too_big)) == (grpc.StatusCode.INVALID_ARGUMENT, "enhance.scale")


async def test_variations_take_the_prompt_from_the_image(image_service) -> None:
    original = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(prompt="a red fox in snow")))))[0]
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=image_pb2.GenerationParams(n_images=2, seed=77, steps=4, sampler="euler"),
        variations=image_pb2.Variations(image=original.png))))
    accepted = events[0].accepted
    assert "a red fox in snow" in accepted.prompt.effective_prompt and list(accepted.seeds) == [77, 78]
    images = images_of(events)
    assert len(images) == 2 and images[0].png != images[1].png
    assert (images[0].width, images[0].height) == (64, 64)
    no_prompt = image_pb2.GenerateRequest(params=params(prompt=""),
                                          variations=image_pb2.Variations(image=png_bytes(noise_image())))
    assert await refused(image_service.stub.Generate(no_prompt)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                     "params.prompt")


async def test_polyexponential_schedule_and_dynamic_thresholding(image_service) -> None:
    async def one(**overrides) -> bytes:
        return images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
            params=params(steps=4, **overrides)))))[0].png

    plain = await one()
    poly = await one(noise_schedule=image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL, schedule_rho=2.0)
    poly_rho1 = await one(noise_schedule=image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL, schedule_rho=1.0)
    assert len({plain, poly, poly_rho1}) == 3
    assert decode(poly).text["parameters"].count("Schedule type: Polyexponential, ") == 1
    thresholded = await one(guidance_scale=30.0, dynamic_thresholding=0.9, dynamic_thresholding_max=0.5)
    unthresholded = await one(guidance_scale=30.0)
    assert thresholded != unthresholded
    assert "Dynamic thresholding" in decode(thresholded).text["parameters"]
    for sampler in ("euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral", "ddim", "dpmpp_sde"):
        await one(sampler=sampler, guidance_scale=12.0, dynamic_thresholding=0.95)
    code, field = await refused(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(sampler="ddim", noise_schedule=image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL))))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "params.noise_schedule")
    for bad in (dict(dynamic_thresholding=1.0), dict(dynamic_thresholding=-0.1),
                dict(dynamic_thresholding=0.9, dynamic_thresholding_max=0.0)):
        code, field = await refused(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(**bad))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field.startswith("params.dynamic_thresholding")
    code, field = await refused(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(noise_schedule=image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL, schedule_rho=50.0))))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "params.schedule_rho")


def test_tiled_lanczos_is_plain_lanczos() -> None:
    image = Image.open(io.BytesIO(png_bytes(noise_image(5))))
    assert Upscalers().upscale(image, (100, 90), "lanczos").tobytes() == image.resize((100, 90),
                                                                                      Image.LANCZOS).tobytes()
