"""The OpenAPI document states the bounds the services enforce: the sampling ranges as the text
service checks them (one table, `fabula_wire.sampling`), and, once the services have reported
them, the limits of the deployment and its models (`gateway.contract`)."""

from __future__ import annotations

import math

import jsonschema
import numpy as np
import pytest
from pydantic import ValidationError

from fabula_wire.sampling import BIAS_RANGE, SAMPLING_RANGES, Range
from gateway.contract import RUNTIME_BOUNDS, ServiceLimits, apply_limits
from gateway.main import create_app
from gateway.schemas.text import GenerateBody

RANGES = {**SAMPLING_RANGES, "bias": BIAS_RANGE}
LIMITS = ServiceLimits(text_models=("tiny", "other"), max_new_tokens=32, max_prompt_chars=1000, vocab_size=300,
                       image_models=("tiny-sd",), max_steps=4, max_images=8, presets=("neutral",))


def probes(allowed: Range) -> list[float]:
    """Values on, just inside and just outside every bound, and the gap above the low bound."""
    step = 1 if allowed.integer else 1e-3
    values = [allowed.low, allowed.high, allowed.low - step, allowed.high + step, allowed.low + step,
              allowed.high - step, (allowed.low + allowed.high) / 2]
    if allowed.min_above_low:
        values += [allowed.min_above_low / 2, allowed.min_above_low]
    return [int(v) if allowed.integer and float(v).is_integer() else v for v in values]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_the_json_schema_of_a_range_accepts_exactly_what_the_service_accepts(name):
    allowed = RANGES[name]
    validator = jsonschema.Draft202012Validator(allowed.json_schema())
    for value in probes(allowed):
        assert validator.is_valid(value) == (allowed.problem(value) is None), (name, value)
    assert allowed.problem(math.nan) is not None


@pytest.mark.parametrize("name", sorted(SAMPLING_RANGES))
def test_the_gateway_body_refuses_what_the_service_refuses_naming_the_field(name):
    allowed = SAMPLING_RANGES[name]
    for value in probes(allowed):
        refused = allowed.problem(value) is not None
        try:
            GenerateBody.model_validate({"prompt": "x", "sampling": {name: value}})
        except ValidationError as error:
            assert refused, (name, value, error)
            assert error.errors()[0]["loc"] == ("sampling", name)
        else:
            assert not refused, (name, value)


def test_a_value_that_32_bit_floats_round_onto_the_bound_is_refused_by_the_gateway():
    with pytest.raises(ValidationError) as raised:
        GenerateBody.model_validate({"prompt": "x", "sampling": {"top_p": 1e-300}})
    assert raised.value.errors()[0]["loc"] == ("sampling", "top_p")


def test_the_document_states_the_sampling_ranges():
    schemas = create_app().openapi()["components"]["schemas"]
    for name, allowed in SAMPLING_RANGES.items():
        stated = [branch for branch in schemas["Sampling"]["properties"][name]["anyOf"] if branch.get("type") != "null"]
        expected = allowed.json_schema()
        if allowed.low_open and not allowed.integer:
            # As protobuf's 32-bit float carries it: the least value above the bound.
            expected["minimum"] = float(np.nextafter(np.float32(allowed.low), np.float32(math.inf)))
        assert stated == expected.get("anyOf", [expected]), name


def test_the_services_limits_are_written_into_the_document():
    static = create_app().openapi()
    document = apply_limits(static, LIMITS)
    schemas = document["components"]["schemas"]
    generate = schemas["gateway__schemas__text__GenerateBody"]["properties"]
    assert generate["model"]["enum"] == ["", "tiny", "other"]
    assert [b.get("maximum") for b in generate["max_new_tokens"]["anyOf"]] == [32, None]
    assert schemas["LogitBias"]["properties"]["token_id"]["maximum"] == 299
    assert schemas["Txt2ImgBody"]["properties"]["steps"]["anyOf"][0]["maximum"] == 4
    # The static document is left as it was.
    assert "enum" not in static["components"]["schemas"]["gateway__schemas__text__GenerateBody"]["properties"]["model"]


def test_every_runtime_bound_names_a_property_of_the_document():
    schemas = create_app().openapi()["components"]["schemas"]
    for component, name, _, _ in RUNTIME_BOUNDS:
        assert name in schemas[component]["properties"], (component, name)
