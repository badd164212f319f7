"""Prompt editing and prompt dialects through the real pipeline and service on the tiny model."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from fabula.image.v1 import image_pb2
from services.image.conditioning import encode, stage_prompt
from services.image.backends import create_backend
from services.image.params import RawRequest, check_inputs
from services.image.pipeline import ImagePipeline
from services.image.prompts import Dialect
from services.image.settings import ImageSettings
from tests.integration.image.conftest import collect, decode, images_of, params


class RecordingBackend:
    """The real eager back end, remembering the text conditioning of every UNet call."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.conditionings: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def unet(self, sample, timestep, encoder_hidden_states, added_cond_kwargs):
        self.conditionings.append(encoder_hidden_states.clone())
        return self._backend.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs)


@pytest.fixture
def recording_pipeline(tiny_model):
    settings = ImageSettings(backend="eager", warmup_steps=0)
    backend = RecordingBackend(create_backend(tiny_model, settings, torch.device("cpu")))
    return ImagePipeline(tiny_model, backend, max_chunks=4), settings


def _request(pipeline, settings, **values):
    fields = dict(model="tiny", width=64, height=64, seed=5, sampler="euler", quality_tags=False,
                  negative_preset="none", guidance_scale=7.0)
    fields.update(values)
    return check_inputs(RawRequest(**fields), {"tiny": pipeline.model}, "tiny", settings)


def _alone(pipeline, text: str, dialect: Dialect, chunks: int = 1) -> torch.Tensor:
    """The conditioning of `text` encoded on its own."""
    staged = stage_prompt(pipeline.tokenizers, text, dialect, 1)
    encoders = [lambda ids, i=i: pipeline.backend.encode_text(i, ids) for i in range(len(pipeline.tokenizers))]
    return encode(pipeline.tokenizers, encoders, staged.tokenized[0], chunks).hidden


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_sde"])
def test_prompt_editing_switches_the_conditioning_at_its_step(recording_pipeline, sampler) -> None:
    pipeline, settings = recording_pipeline
    # 4 steps, "[a red cat:a blue dog:1]": the step counter runs 0..3, the first stage holds
    # while it is at most 1, so calls for steps 0 and 1 see the cat and steps 2 and 3 the dog.
    request = _request(pipeline, settings, prompt="[a red cat:a blue dog:1], (grass:1.2)",
                       negative_prompt="[blurry::2]", steps=4, sampler=sampler, dialect="a1111")
    images = pipeline(request)
    assert len(images) == 1
    calls = pipeline.backend.conditionings
    # Second-order samplers call the UNet twice per step but the last; both calls are one step.
    order = request.sampler.make(pipeline.model.scheduler_config, request.noise_schedule, request.seeds).order
    assert len(calls) == 4 * order - (order - 1)
    cat = _alone(pipeline, "a red cat, (grass:1.2)", Dialect.A1111)
    dog = _alone(pipeline, "a blue dog, (grass:1.2)", Dialect.A1111)
    blurry, nothing = _alone(pipeline, "blurry", Dialect.A1111), _alone(pipeline, "", Dialect.A1111)
    assert not torch.allclose(cat, dog)
    for index, call in enumerate(calls):
        step = index // order
        negative, positive = call.chunk(2)
        assert torch.allclose(positive, cat if step <= 1 else dog, atol=1e-6), (index, step)
        assert torch.allclose(negative, blurry if step <= 2 else nothing, atol=1e-6), (index, step)


def test_the_same_prompt_in_each_dialect(recording_pipeline) -> None:
    pipeline, settings = recording_pipeline
    for dialect, expected in (("novelai", "(a cat) [on:under:1] the table"), ("a1111", "a cat on the table")):
        pipeline.backend.conditionings.clear()
        request = _request(pipeline, settings, prompt="(a cat) [on:under:1] the table", steps=2, dialect=dialect,
                           guidance_scale=1.0)
        pipeline(request)
        first = pipeline.backend.conditionings[0]
        reference = _alone(pipeline, expected, Dialect(dialect))
        if dialect == "novelai":
            # Literal parentheses, and [on:under:1] is de-emphasised text, not an edit.
            assert torch.allclose(first, reference, atol=1e-6)
        else:
            # (a cat) is weighted x1.1; the zero-mean tiny encoder leaves the rest exactly as is.
            plain = _alone(pipeline, "a cat on the table", Dialect.A1111)
            assert not torch.allclose(first, plain) and torch.allclose(first[0, 3:], plain[0, 3:], atol=1e-6)
            assert torch.allclose(first[0, 1:3], plain[0, 1:3] * 1.1, atol=1e-5)


async def test_tokenize_shows_the_parse_and_the_edit_schedule(image_service) -> None:
    reply = await image_service.stub.Tokenize(image_pb2.TokenizeRequest(
        prompt="(cat:1.2) [sitting:standing:0.5] BREAK sky", dialect=image_pb2.PROMPT_DIALECT_A1111, steps=10))
    report = reply.prompt
    assert report.dialect == image_pb2.PROMPT_DIALECT_A1111
    assert [(stage.until_step, stage.text) for stage in report.stages] == [
        (5, "(cat:1.2) sitting BREAK sky"), (10, "(cat:1.2) standing BREAK sky")]
    segments = [(s.text, round(s.weight, 4), s.chunk_break) for s in report.segments]
    assert segments == [("cat", 1.2, False), (" sitting", 1.0, False), ("", 0.0, True), ("sky", 1.0, False)]
    assert [[t for t in chunk.tokens] for chunk in report.stages[1].chunks] == [
        ["cat</w>", "standing</w>"], ["sky</w>"]]
    assert list(report.chunks[0].tokens) == ["cat</w>", "sitting</w>"]
    novelai = (await image_service.stub.Tokenize(image_pb2.TokenizeRequest(
        prompt="(cat:1.2) [sitting:standing:0.5] BREAK sky"))).prompt
    assert novelai.dialect == image_pb2.PROMPT_DIALECT_NOVELAI and len(novelai.stages) == 1
    assert len(novelai.chunks) == 1 and "break</w>" in novelai.chunks[0].tokens


@pytest.mark.parametrize("request_, field", [
    (image_pb2.TokenizeRequest(prompt="x", dialect=7), "dialect"),
    (image_pb2.TokenizeRequest(prompt="x", steps=100_000), "steps"),
])
async def test_tokenize_refuses_bad_values_naming_the_field(image_service, request_, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await image_service.stub.Tokenize(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.details()


async def test_generation_in_the_a1111_dialect_reports_and_differs(image_service) -> None:
    prompt = "a castle [at dawn:at night:1], watercolor"
    edited = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(prompt=prompt, steps=3, dialect=image_pb2.PROMPT_DIALECT_A1111))))
    plain = await collect(image_service.stub.Generate(image_pb2.GenerateRequest(
        params=params(prompt=prompt, steps=3))))
    accepted = edited[0].accepted.prompt
    assert [stage.until_step for stage in accepted.stages] == [1, 3]
    assert accepted.dialect == image_pb2.PROMPT_DIALECT_A1111
    first, second = (np.asarray(decode(images_of(e)[0].png)) for e in (edited, plain))
    assert not np.array_equal(first, second)
    refused = image_service.stub.Generate(image_pb2.GenerateRequest(params=params(dialect=9)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(refused)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "params.dialect" in caught.value.details()
