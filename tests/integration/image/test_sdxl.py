"""The SDXL family end to end on the tiny seeded SDXL model: two text encoders, pooled text
embeddings, size micro-conditioning, against a direct diffusers StableDiffusionXLPipeline call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image, ImageFilter

from fabula.image.v1 import image_pb2
from services.image.conditioning import Chunk
from services.image.images import parse_parameters, read_png_text
from services.image.params import RawRequest
from tests.integration.image.conftest import collect, decode, images_of, params, png_bytes, running_image_service


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(decode(png).convert("RGB"), dtype=np.int16)


@pytest.fixture
async def xl_service(tiny_sdxl_model, tiny_model, tmp_path):
    # Two families in one process, selected by name in each request (the SDXL one is the default).
    async with running_image_service([tiny_sdxl_model, tiny_model], tmp_path) as running:
        yield running


def xl_params(**overrides) -> image_pb2.GenerationParams:
    values = {"model": "xl", "quality_tags": False, "negative_preset": "none"}
    values.update(overrides)
    return params(**values)


async def test_sdxl_txt2img_is_bit_identical_to_a_direct_diffusers_call(xl_service, tiny_sdxl_model) -> None:
    request = xl_params(prompt="a knight in the snow", negative_prompt="blurry", steps=3, guidance_scale=5.0,
                        n_images=2, seed=99)
    events = await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(params=request)))
    assert events[0].accepted.model == "xl"
    served = images_of(events)
    pipe = tiny_sdxl_model.pipeline(EulerDiscreteScheduler.from_config(tiny_sdxl_model.scheduler_config))
    direct = pipe(prompt="a knight in the snow", negative_prompt="blurry", height=64, width=64, num_inference_steps=3,
                  guidance_scale=5.0, num_images_per_prompt=2,
                  generator=[torch.Generator().manual_seed(99), torch.Generator().manual_seed(100)]).images
    for image, reference in zip(served, direct, strict=True):
        assert np.array_equal(pixels(image.png), np.asarray(reference, dtype=np.int16))
    assert pixels(served[0].png).std() > 0  # not a blank frame (NaNs decode to black)
    fields = parse_parameters(read_png_text(served[0].png)["parameters"])[2]
    assert fields["Model"] == "xl" and fields["Size"] == "64x64" and fields["Seed"] == "99"
    assert fields["Model hash"] == tiny_sdxl_model.short_hash


async def test_models_are_selected_by_name(xl_service, tiny_model) -> None:
    reply = await xl_service.stub.ListModels(image_pb2.ListModelsRequest())
    assert {(m.name, m.family, m.is_default) for m in reply.models} == {("xl", "sdxl", True), ("tiny", "sd1", False)}
    tiny = images_of(await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(params=params(model="tiny")))))
    xl = images_of(await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(params=xl_params()))))
    assert "Model: tiny," in tiny[0].parameters and "Model: xl," in xl[0].parameters
    assert not np.array_equal(pixels(tiny[0].png), pixels(xl[0].png))


async def test_sdxl_family_defaults_append_its_quality_tags(xl_service) -> None:
    reply = await xl_service.stub.Tokenize(image_pb2.TokenizeRequest(prompt="a fox", model="xl", quality_tags=True))
    assert reply.prompt.effective_prompt == "a fox, best quality, amazing quality, very aesthetic, absurdres"


async def test_sdxl_img2img_runs_and_follows_strength(xl_service) -> None:
    source = Image.new("RGB", (64, 64))
    source.paste((220, 40, 40), (0, 0, 32, 64))
    outputs = {}
    for strength in (0.25, 1.0):
        events = await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(
            params=xl_params(steps=4), img2img=image_pb2.ImageToImage(image=png_bytes(source), strength=strength))))
        steps = [e.progress.total_steps for e in events if e.WhichOneof("event") == "progress"]
        assert steps[0] == max(1, int(4 * strength))
        image = images_of(events)[0]
        assert "Denoising strength: " in image.parameters and decode(image.png).size == (64, 64)
        outputs[strength] = pixels(image.png)
    assert not np.array_equal(outputs[0.25], outputs[1.0])


async def test_sdxl_inpainting_leaves_unmasked_pixels_unchanged(xl_service) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (40, 16, 80, 48))
    events = await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(
        params=xl_params(width=0, height=0, steps=3), inpaint=image_pb2.Inpaint(
            image=png_bytes(image), mask=png_bytes(mask), mask_blur=4))))
    assert (events[0].accepted.width, events[0].accepted.height) == (128, 64)
    result = pixels(images_of(events)[0].png)
    original = np.asarray(image, dtype=np.int16)
    untouched = np.asarray(mask.filter(ImageFilter.GaussianBlur(4))) == 0
    assert np.array_equal(result[untouched], original[untouched])
    inside = np.asarray(mask) == 255
    assert np.abs(result[inside] - original[inside]).mean() > 10


def _direct(model, index: int, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """What diffusers' SDXL encode_prompt takes from encoder `index`: the penultimate hidden
    states and output[0] (the second encoder's pooled projection)."""
    with torch.inference_mode():
        output = model.text_encoders[index](torch.tensor([ids]), output_hidden_states=True)
    return output.hidden_states[-2][0], output[0][0]


async def test_sdxl_long_weighted_prompts_condition_both_encoders_per_chunk(xl_service, tiny_sdxl_model) -> None:
    pipeline = xl_service.generator.pipelines["xl"]
    words = ", ".join(f"tag{i}" for i in range(30))  # about 100 tokens: two chunks
    plain = xl_service.generator._job(RawRequest(model="xl", prompt=words, quality_tags=False, guidance_scale=1.0,
                                                 width=64, height=128))
    weighted = xl_service.generator._job(RawRequest(model="xl", prompt="{{" + words + "}}, [calm]",
                                                    quality_tags=False, guidance_scale=1.0, width=64, height=128))
    for job in (plain, weighted):
        pipeline.encode_prompt(job)
    # Both tokenizers cut the text the same way (same vocabulary), into two 75-token chunks.
    first, second = plain.prompts.positive.tokenized[0]
    assert len(first.chunks) == 2 and [c.token_ids for c in first.chunks] == [c.token_ids for c in second.chunks]
    assert plain.embeds.shape == (1, 2 * 77, 32 + 64)
    # Each chunk is encoded on its own by each encoder (each with its own padding token), the
    # encoders' penultimate layers side by side along the features.
    for index, tokenizer in enumerate(pipeline.tokenizers):
        columns = slice(0, 32) if index == 0 else slice(32, 96)
        for c, chunk in enumerate(first.chunks):
            hidden, _ = _direct(tiny_sdxl_model, index, tokenizer.window(chunk)[0])
            torch.testing.assert_close(plain.embeds[0, 77 * c:77 * (c + 1), columns], hidden, rtol=0, atol=0)
    # Pooled: the second encoder's projection of the first chunk (as A1111 and ComfyUI do); the
    # tolerance is float rounding (both chunks went through the encoder in one batch).
    _, pooled = _direct(tiny_sdxl_model, 1, pipeline.tokenizers[1].window(first.chunks[0])[0])
    _, pooled_second = _direct(tiny_sdxl_model, 1, pipeline.tokenizers[1].window(first.chunks[1])[0])
    torch.testing.assert_close(plain.added["text_embeds"][0], pooled, rtol=0, atol=1e-6)
    assert not torch.allclose(plain.added["text_embeds"][0], pooled_second, atol=1e-3)
    # Size micro-conditioning: original (h, w), crop (0, 0), target (h, w).
    assert plain.added["time_ids"].tolist() == [[128.0, 64.0, 0.0, 0.0, 128.0, 64.0]]
    # Emphasis reweights the hidden states of both encoders, each chunk keeping its mean; the pooled
    # vector is the unweighted first chunk's (weights act on token embeddings, not the pooled one).
    weighted_tokens = weighted.prompts.positive.tokenized[0]  # the one stage, per tokenizer
    assert weighted_tokens[0].is_weighted and weighted_tokens[1].is_weighted
    assert weighted.embeds.shape == (1, 2 * 77, 96)
    for index, columns in enumerate((slice(0, 32), slice(32, 96))):
        for c in range(2):
            block = weighted.embeds[0, 77 * c:77 * (c + 1), columns]
            hidden, _ = _direct(tiny_sdxl_model, index,
                                pipeline.tokenizers[index].window(weighted_tokens[index].chunks[c])[0])
            assert not torch.allclose(block, hidden)
            torch.testing.assert_close(block.mean(), hidden.mean(), rtol=1e-4, atol=1e-6)
    _, pooled_weighted = _direct(tiny_sdxl_model, 1, pipeline.tokenizers[1].window(
        weighted_tokens[1].chunks[0])[0])
    torch.testing.assert_close(weighted.added["text_embeds"][0], pooled_weighted, rtol=0, atol=1e-6)
    # An empty chunk (the shorter prompt's partner) is encoded as an empty prompt.
    assert pipeline.tokenizers[1].window(Chunk())[0][:3] == [49406, 49407, 0]


async def test_sdxl_long_prompt_generates_with_classifier_free_guidance(xl_service) -> None:
    words = ", ".join(f"{{tag{i}}}" for i in range(40))
    events = await collect(xl_service.stub.Generate(image_pb2.GenerateRequest(
        params=xl_params(prompt=words, negative_prompt="blurry", guidance_scale=5.0))))
    assert len(events[0].accepted.prompt.chunks) == 2
    image = images_of(events)[0]
    assert pixels(image.png).std() > 0
    assert read_png_text(image.png)["parameters"].startswith(words)


def test_builtin_models_are_named_in_the_error_for_an_unknown_one(tmp_path) -> None:
    from services.image.models import resolve_source
    from services.toolkit.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="builtin:tiny-sd, builtin:tiny-sdxl"):
        resolve_source("builtin:tiny-sd3", tmp_path)
