"""Each action end to end through gRPC on the tiny model, and the pipeline against diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image

from fabula.image.v1 import image_pb2
from services.image.images import parse_parameters, read_png_text
from services.image.samplers import SAMPLERS
from tests.integration.image.conftest import collect, decode, images_of, params, png_bytes


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(decode(png).convert("RGB"), dtype=np.int16)


async def test_txt2img_streams_accepted_progress_images_finished(image_service) -> None:
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(n_images=2, steps=3, preview_every=1))))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["accepted", "progress", "progress", "progress", "image", "image", "finished"]
    accepted = events[0].accepted
    assert list(accepted.seeds) == [1234, 1235] and (accepted.width, accepted.height) == (64, 64)
    progress = [event.progress for event in events if event.WhichOneof("event") == "progress"]
    assert [(p.step, p.total_steps) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    # Previews every step but the last (the image itself follows), at 1/8 of the size.
    assert [len(p.previews) for p in progress] == [2, 2, 0]
    assert decode(progress[0].previews[0]).size == (8, 8)
    images = images_of(events)
    assert [(image.index, image.seed) for image in images] == [(0, 1234), (1, 1235)]
    assert all(decode(image.png).size == (64, 64) for image in images)
    assert not np.array_equal(pixels(images[0].png), pixels(images[1].png))


async def test_random_seed_is_reported_and_reproduces_the_image(image_service) -> None:
    request = params()
    request.ClearField("seed")
    first = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=request)))
    seed = first[0].accepted.seeds[0]
    assert images_of(first)[0].seed == seed
    again = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(seed=seed))))
    assert np.array_equal(pixels(images_of(first)[0].png), pixels(images_of(again)[0].png))


@pytest.mark.parametrize("guidance_rescale", [0.0, 0.7])
async def test_bit_identical_to_a_direct_diffusers_call(image_service, tiny_model, guidance_rescale) -> None:
    request = params(prompt="a knight in the snow", negative_prompt="blurry", quality_tags=False,
                     negative_preset="none", steps=3, guidance_scale=6.5, guidance_rescale=guidance_rescale,
                     n_images=2, seed=99)
    served = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=request))))
    pipe = tiny_model.pipeline(EulerDiscreteScheduler.from_config(tiny_model.scheduler_config))
    direct = pipe(prompt="a knight in the snow", negative_prompt="blurry", height=64, width=64, num_inference_steps=3,
                  guidance_scale=6.5, guidance_rescale=guidance_rescale, num_images_per_prompt=2,
                  generator=[torch.Generator().manual_seed(99), torch.Generator().manual_seed(100)]).images
    for image, reference in zip(served, direct, strict=True):
        assert np.array_equal(pixels(image.png), np.asarray(reference, dtype=np.int16))


async def test_each_image_of_a_batch_can_be_made_again_alone(image_service) -> None:
    batch = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(n_images=2, seed=500)))))
    alone = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=params(seed=501)))))
    # Same noise and seed; only the batch size of the UNet call differs (float rounding).
    assert np.abs(pixels(batch[1].png) - pixels(alone[0].png)).max() <= 2


@pytest.mark.parametrize("sampler,schedule", [(name, schedule) for name, spec in SAMPLERS.items()
                                              for schedule in spec.schedules])
async def test_every_sampler_and_schedule_runs(image_service, sampler, schedule) -> None:
    enum = {"native": 1, "karras": 2, "exponential": 3, "polyexponential": 4}[schedule]
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(sampler=sampler, noise_schedule=enum, steps=3))))
    image = images_of(events)[0]
    assert decode(image.png).size == (64, 64)
    assert f"Sampler: {SAMPLERS[sampler].display_name}," in image.parameters
    array = pixels(image.png)
    assert array.std() > 0  # not a blank frame (NaNs decode to black)


def vae_round_trip(model, image: Image.Image) -> np.ndarray:
    """What the (random) tiny VAE makes of an image: the best any image action can keep of it."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)
    with torch.inference_mode():
        latents = model.vae.encode(processor.preprocess(image)).latent_dist.mode()
        decoded = model.vae.decode(latents, return_dict=False)[0]
    return np.asarray(processor.postprocess(decoded, output_type="pil")[0], dtype=np.int16)


async def test_img2img_keeps_more_of_the_input_at_lower_strength(image_service, tiny_model) -> None:
    source = Image.new("RGB", (64, 64))
    source.paste((220, 40, 40), (0, 0, 32, 64))
    source.paste((40, 40, 220), (32, 0, 64, 64))
    reference = vae_round_trip(tiny_model, source)
    results = {}
    for strength in (0.2, 1.0):
        events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
            params=params(steps=5), img2img=image_pb2.ImageToImage(image=png_bytes(source), strength=strength))))
        results[strength] = np.abs(pixels(images_of(events)[0].png) - reference).mean()
        assert [e.progress.total_steps for e in events if e.WhichOneof("event") == "progress"][0] == max(
            1, int(5 * strength))
    assert results[0.2] < results[1.0]


async def test_img2img_extra_noise_changes_the_result(image_service) -> None:
    source = png_bytes(Image.new("RGB", (64, 64), (128, 90, 30)))
    outputs = []
    for extra in (0.0, 0.9):
        events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
            params=params(steps=4), img2img=image_pb2.ImageToImage(image=source, strength=0.5, extra_noise=extra))))
        outputs.append(pixels(images_of(events)[0].png))
    assert not np.array_equal(*outputs)


def _inpaint_inputs(size=(128, 64), box=(40, 16, 80, 48)):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return image, mask


@pytest.mark.parametrize("content", [image_pb2.MASKED_CONTENT_ORIGINAL, image_pb2.MASKED_CONTENT_FILL,
                                     image_pb2.MASKED_CONTENT_LATENT_NOISE, image_pb2.MASKED_CONTENT_LATENT_NOTHING])
async def test_inpainting_leaves_unmasked_pixels_unchanged(image_service, content) -> None:
    image, mask = _inpaint_inputs()
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(width=0, height=0, steps=3), inpaint=image_pb2.Inpaint(
            image=png_bytes(image), mask=png_bytes(mask), mask_blur=4, masked_content=content))))
    result = pixels(images_of(events)[0].png)
    assert result.shape == (64, 128, 3)
    original = np.asarray(image, dtype=np.int16)
    blurred = np.asarray(mask.filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(4)))
    untouched = blurred == 0
    assert untouched.sum() > 0.5 * untouched.size
    assert np.array_equal(result[untouched], original[untouched])
    inside = np.asarray(mask) == 255
    assert np.abs(result[inside] - original[inside]).mean() > 10


async def test_inpainting_only_the_masked_region_at_full_resolution(image_service) -> None:
    image, mask = _inpaint_inputs(size=(192, 192), box=(100, 100, 124, 124))
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(width=64, height=64, steps=3), inpaint=image_pb2.Inpaint(
            image=png_bytes(image), mask=png_bytes(mask), only_masked=True, only_masked_padding=8))))
    assert (events[0].accepted.width, events[0].accepted.height) == (64, 64)
    result = pixels(images_of(events)[0].png)
    assert result.shape == (192, 192, 3)
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], np.asarray(image, dtype=np.int16)[outside])
    assert "Inpaint area: Only masked" in images_of(events)[0].parameters


async def test_outpainting_returns_the_enlarged_canvas(image_service) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    events = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(steps=3, width=0, height=0), outpaint=image_pb2.Outpaint(
            image=png_bytes(image), right=64, bottom=32, mask_blur=4))))
    result = pixels(images_of(events)[0].png)
    assert result.shape == (96, 128, 3)
    # The original, away from the redrawn seam, is kept exactly; the new area is generated.
    original = np.asarray(image, dtype=np.int16)
    assert np.array_equal(result[:40, :40], original[:40, :40])
    assert result[70:, 70:].std() > 0


async def test_png_metadata_round_trips(image_service) -> None:
    request = params(prompt="a {red} fox, snow", negative_prompt="blurry, text", negative_preset="light",
                     guidance_scale=5.5, steps=2, seed=77, sampler="dpmpp_2m", noise_schedule=2)
    image = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=request))))[0]
    chunks = read_png_text(image.png)
    assert chunks["parameters"] == image.parameters
    prompt, negative, fields = parse_parameters(chunks["parameters"])
    assert prompt == "masterpiece, best quality, a {red} fox, snow"
    assert negative.endswith("blurry, text") and negative.startswith("lowres, text, cropped")
    assert fields["Steps"] == "2" and fields["Seed"] == "77" and fields["CFG scale"] == "5.5"
    assert fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras" and fields["Size"] == "64x64"
    saved = json.loads(chunks["fabula"])
    assert saved["prompt"] == "a {red} fox, snow" and saved["negative_preset"] == "light" and saved["seed"] == 77
    assert saved["sampler"] == "dpmpp_2m" and saved["noise_schedule"] == "karras"


async def test_long_prompts_are_encoded_in_chunks_and_reported(image_service_with) -> None:
    async with image_service_with(max_prompt_chunks=2) as service:
        words = ", ".join(f"tag{i}" for i in range(120))
        reply = await service.stub.Tokenize(image_pb2.TokenizeRequest(prompt=words))
        assert reply.chunk_tokens == 75 and reply.max_chunks == 2
        assert len(reply.prompt.chunks) == 2 and all(len(c.token_ids) <= 75 for c in reply.prompt.chunks)
        # A chunk ends after a comma rather than inside a tag.
        assert reply.prompt.chunks[0].tokens[-1] == ",</w>"
        assert reply.prompt.dropped_words and reply.prompt.dropped_words[-1] == "tag119"
        events = await collect(service.stub.Generate(image_pb2.GenerateRequest(
            params=params(prompt=words, quality_tags=False))))
        assert list(events[0].accepted.prompt.dropped_words) == list(reply.prompt.dropped_words)
        assert images_of(events)


async def test_tokenize_reports_weights_and_quality_tags(image_service) -> None:
    reply = await image_service.stub.Tokenize(image_pb2.TokenizeRequest(prompt="{{cat}}, [dog]", quality_tags=True))
    chunk = reply.prompt.chunks[0]
    weights = dict(zip(chunk.tokens, chunk.weights))
    assert weights["cat</w>"] == pytest.approx(1.05**2) and weights["dog</w>"] == pytest.approx(1 / 1.05)
    assert reply.prompt.effective_prompt.startswith("masterpiece, best quality, ")
    assert reply.prompt.token_count == len(chunk.token_ids)


async def test_list_models(image_service) -> None:
    reply = await image_service.stub.ListModels(image_pb2.ListModelsRequest())
    (model,) = reply.models
    assert model.name == "tiny" and model.family == "sd1" and model.is_default and model.engine == "eager"
    # Loaded from a folder, not as `builtin:tiny-sd`: not flagged as the built-in (noise) model.
    assert not model.builtin
    assert {p.name for p in model.negative_presets} == {"heavy", "light", "none"}
    assert {s.name for s in reply.samplers} >= {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral",
                                                "dpmpp_sde", "ddim"}
