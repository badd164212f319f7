"""The image bodies' run-time document (gateway/image_contract.py) states what the routes and the
image service accept: A1111's sampler and scheduler names with the schedules each sampler offers,
the model's presets, and the image service's ranges as the 32-bit floats that reach it."""

from __future__ import annotations

import itertools
import struct

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError

from fabula.image.v1 import image_pb2
from gateway.contract import ServiceLimits, apply_limits
from gateway.errors import ApiError
from gateway.main import create_app
from gateway.schemas.a1111 import SCHEDULERS, Catalogue
from gateway.schemas.common import float32_between

KARRAS, EXPONENTIAL, POLY = (image_pb2.NOISE_SCHEDULE_KARRAS, image_pb2.NOISE_SCHEDULE_EXPONENTIAL,
                             image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL)
NATIVE = image_pb2.NOISE_SCHEDULE_NATIVE
# Two samplers that offer different schedules; the default sampler offers neither Karras nor
# Exponential, as the built-in model's (Euler a) does not.
CATALOGUE = image_pb2.ListModelsResponse(
    models=[image_pb2.ModelInfo(name="tiny", hash="9806781652", is_default=True, default_sampler="euler_ancestral",
                                negative_presets=[image_pb2.NegativePreset(name="heavy"),
                                                  image_pb2.NegativePreset(name="none")])],
    samplers=[image_pb2.SamplerInfo(name="euler", display_name="Euler",
                                    noise_schedules=[NATIVE, KARRAS, EXPONENTIAL, POLY]),
              image_pb2.SamplerInfo(name="euler_ancestral", display_name="Euler a", noise_schedules=[NATIVE, POLY]),
              image_pb2.SamplerInfo(name="ddim", display_name="DDIM", noise_schedules=[NATIVE])],
    max_steps=4, max_images=8, max_references=2, max_controls=2, max_characters=2, upscalers=["lanczos"])
LIMITS = ServiceLimits(text_models=("tiny",), max_new_tokens=32, max_prompt_chars=1000, vocab_size=300,
                       image_models=("tiny",), max_steps=4, max_images=8, presets=("neutral",),
                       image_catalogue=CATALOGUE)


@pytest.fixture(scope="module")
def document() -> dict:
    app = create_app()
    return apply_limits(app.state.contract.static_document(), LIMITS)


def validator(document: dict, component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{component}",
                                            "components": document["components"]})


def service_takes(sampler_name: str | None, sampler_index: str | None, scheduler: str) -> bool:
    """Whether the A1111 route translates the names and the image service takes the schedule."""
    try:
        sampler, schedule = Catalogue(CATALOGUE).sampler_for(sampler_name, sampler_index, scheduler)
    except ApiError:
        return False
    offered = {s.name: set(s.noise_schedules) for s in CATALOGUE.samplers}[sampler or "euler_ancestral"]
    return schedule == image_pb2.NOISE_SCHEDULE_UNSPECIFIED or schedule in offered


NAMES = [None, "", "Euler", "euler", "Euler Karras", "Euler a", "euler a", "Euler a Karras", "DDIM",
         "DDIM Exponential", "LMS"]


@pytest.mark.parametrize("component", ["Txt2ImgBody", "Img2ImgBody"])
def test_a1111_sampler_and_scheduler_are_valid_by_the_document_exactly_when_taken(document, component):
    check = validator(document, component)
    extra = {"init_images": ["AAAA"]} if component == "Img2ImgBody" else {}
    for sampler_name, sampler_index, scheduler in itertools.product(NAMES, NAMES, [*SCHEDULERS, "karras ", "Uniform"]):
        body = {**extra, "sampler_name": sampler_name, "sampler_index": sampler_index, "scheduler": scheduler}
        assert check.is_valid(body) == service_takes(sampler_name, sampler_index, scheduler), body


def test_a1111_checkpoint_and_hires_upscaler_are_enums(document):
    check = validator(document, "Txt2ImgBody")
    for checkpoint in ("", "tiny", "tiny [9806781652]", "9806781652"):
        assert check.is_valid({"override_settings": {"sd_model_checkpoint": checkpoint}})
        assert Catalogue(CATALOGUE).model_for(checkpoint) in ("", "tiny")
    for checkpoint in ("tiny [0000]", "TINY", 3):
        assert not check.is_valid({"override_settings": {"sd_model_checkpoint": checkpoint}})
    assert check.is_valid({"hr_upscaler": "Latent (bicubic antialiased)"})
    assert not check.is_valid({"hr_upscaler": "ESRGAN_4x"})
    with pytest.raises(ApiError) as refused:
        Catalogue(CATALOGUE).hires_upscaler("ESRGAN_4x")
    assert refused.value.field == "hr_upscaler"


def test_the_native_body_states_presets_and_each_samplers_schedules(document):
    check = validator(document, "gateway__schemas__image__GenerateImageBody")
    assert check.is_valid({"negative_preset": "none", "sampler": "euler", "noise_schedule": "karras"})
    assert check.is_valid({"noise_schedule": "polyexponential"})  # the default sampler, Euler a, offers it
    assert not check.is_valid({"noise_schedule": "karras"})  # Euler a does not
    assert not check.is_valid({"sampler": "ddim", "noise_schedule": "polyexponential"})
    assert not check.is_valid({"negative_preset": "light"})  # not one of this model's presets
    assert not check.is_valid({"references": [{"image": "AAAA"}] * 3})  # at most max_references
    assert not check.is_valid({"action": "img2img"})  # an input image
    assert not check.is_valid({"action": "inpaint", "image": "AAAA"})  # and a mask
    assert not check.is_valid({"action": "upscale", "image": "AAAA", "upscaler": "ESRGAN_4x"})
    assert check.is_valid({"action": "upscale", "image": "AAAA", "upscaler": "lanczos"})


def test_novelai_needs_the_image_for_img2img_and_infill(document):
    check = validator(document, "gateway__schemas__novelai__GenerateImageBody")
    assert check.is_valid({"input": "a cat"})
    assert not check.is_valid({"input": "a cat", "action": "img2img"})
    assert check.is_valid({"input": "a cat", "action": "img2img", "parameters": {"image": "AAAA"}})
    assert not check.is_valid({"input": "a cat", "action": "infill", "parameters": {"image": "AAAA"}})
    assert not check.is_valid({"input": "a cat", "parameters": {"sampler": "ddim", "noise_schedule": "karras"}})


def as_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@pytest.mark.parametrize("low, high, low_open, high_open", [(0, 0.99, False, False), (0, 1, True, False),
                                                           (0.1, 10, False, False), (0, 1, False, True),
                                                           (0, 100, True, False)])
def test_a_float32_range_allows_only_numbers_that_arrive_inside_it(low, high, low_open, high_open):
    field = TypeAdapter(float32_between(low, high, low_open=low_open, high_open=high_open))
    schema = jsonschema.Draft202012Validator(field.json_schema())
    near = [low, high, 0.0, 1e-46, 1e-45, 2e-45]
    probes = [value * factor for value in near for factor in (1 - 1e-7, 1 - 1e-9, 1, 1 + 1e-9, 1 + 1e-7)]
    for value in probes:
        try:
            field.validate_python(value)
            taken = True
        except ValidationError:
            taken = False
        assert taken == schema.is_valid(value), value
        if taken:  # what the service sees, checked as it checks it
            seen = as_float32(value)
            assert (low < seen if low_open else low <= seen) and (seen < high if high_open else seen <= high), value


def test_a_pngs_parameters_are_reported_even_outside_the_ranges_a_request_must_keep():
    # An A1111 picture may say "CFG scale: 60, Denoising strength: 0" (its hires fix's): the
    # metadata route reports it as a request to edit, not a 500.
    from gateway.schemas.image import GenerateImageBody

    request = image_pb2.GenerateRequest(params=image_pb2.GenerationParams(
        guidance_scale=60, hires=image_pb2.HiresFix(scale=6, strength=0)))
    request.txt2img.SetInParent()
    body = GenerateImageBody.from_pb(request).model_dump(mode="json", exclude={"image", "mask"})
    assert body["guidance_scale"] == 60 and body["hires"]["scale"] == 6 and body["hires"]["strength"] == 0
