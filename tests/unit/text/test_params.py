"""Request validation: every bad value is refused before model work, naming the field and value.

Requests are built as protobuf messages and translated by `wire.spec_from_pb`, as the server does."""

from __future__ import annotations

import math

import pytest

from fabula.text.v1 import text_pb2
from services.text import wire
from services.text.params import GenerationParams, Limits, SamplerConvention, SamplerName, SamplingParams
from services.text.presets_store import find, load_presets
from services.toolkit.errors import InvalidArgument

LIMITS = Limits(max_new_tokens=100)


def parse(**spec_fields) -> GenerationParams:
    spec = wire.spec_from_pb(text_pb2.GenerationSpec(**spec_fields))
    return GenerationParams.from_spec(spec, SamplingParams(), LIMITS)


@pytest.mark.parametrize(("sampling", "field"), [
    ({"temperature": math.nan}, "spec.sampling.temperature"),
    ({"temperature": math.inf}, "spec.sampling.temperature"),
    ({"temperature": -0.5}, "spec.sampling.temperature"),
    ({"top_p": 0.0}, "spec.sampling.top_p"),
    ({"top_p": 1.5}, "spec.sampling.top_p"),
    ({"top_a": -1.0}, "spec.sampling.top_a"),
    ({"typical_p": 0.0}, "spec.sampling.typical_p"),
    ({"tail_free": 2.0}, "spec.sampling.tail_free"),
    ({"min_p": math.nan}, "spec.sampling.min_p"),
    ({"repetition_penalty": 0.0}, "spec.sampling.repetition_penalty"),
    ({"repetition_penalty_slope": -1.0}, "spec.sampling.repetition_penalty_slope"),
    ({"frequency_penalty": 3.0}, "spec.sampling.frequency_penalty"),
    ({"presence_penalty": -3.0}, "spec.sampling.presence_penalty"),
])
def test_out_of_range_sampling_values_name_the_field(sampling, field):
    with pytest.raises(InvalidArgument) as raised:
        parse(sampling=text_pb2.SamplingParameters(**sampling))
    assert raised.value.field == field
    assert str(list(sampling.values())[0]) in raised.value.message


@pytest.mark.parametrize("order", [
    [1, 2, 3, 4, 5, 6],            # one missing
    [1, 1, 2, 3, 4, 5, 6, 7],      # one twice
    [1, 2, 3, 4, 5, 6, 7, 0],      # unspecified
    [1, 2, 3, 4, 5, 6, 99],        # unknown
])
def test_unbalanced_sampler_order_is_refused(order):
    sampling = text_pb2.SamplingParameters(sampler_order=[text_pb2.SamplerStep(sampler=s) for s in order])
    with pytest.raises(InvalidArgument) as raised:
        parse(sampling=sampling)
    assert raised.value.field.startswith("spec.sampling.sampler_order")


def test_full_permutation_with_disabled_steps_is_accepted():
    steps = [text_pb2.SamplerStep(sampler=s, enabled=s % 2 == 0) for s in (7, 6, 5, 4, 3, 2, 1)]
    params = parse(sampling=text_pb2.SamplingParameters(sampler_order=steps))
    # The penalty steps left out go first, the newer warpers left out last (their default places).
    assert [wire.SAMPLER_TO_PB[name] for name, _ in params.sampling.order] == [8, 9, 10, 7, 6, 5, 4, 3, 2, 1,
                                                                               12, 11, 13]
    assert params.sampling.order[3][0] is SamplerName.MIN_P
    assert [enabled for _, enabled in params.sampling.order][3:10] == [False, True, False, True, False, True, False]
    assert all(enabled for _, enabled in params.sampling.order[:3] + params.sampling.order[10:])


@pytest.mark.parametrize(("fields", "field"), [
    ({"max_new_tokens": 0}, "spec.max_new_tokens"),
    ({"max_new_tokens": 101}, "spec.max_new_tokens"),
    ({"max_new_tokens": 10, "min_new_tokens": 11}, "spec.min_new_tokens"),
    ({"stop_sequences": [""]}, "spec.stop_sequences[0]"),
    ({"banned_strings": ["ok", "x" * 300]}, "spec.banned_strings[1]"),
    ({"logit_bias": [text_pb2.LogitBias(token_id=1, bias=math.nan)]}, "spec.logit_bias[0].bias"),
    ({"phrase_bias": [text_pb2.PhraseBias(phrase="a", bias=1000)]}, "spec.phrase_bias[0].bias"),
    ({"seed": (1 << 64) - 1}, "spec.seed"),
])
def test_bad_lengths_and_lists_name_the_field(fields, field):
    with pytest.raises(InvalidArgument) as raised:
        parse(**fields)
    assert raised.value.field == field


def test_unset_fields_take_the_preset_values_and_set_ones_override():
    presets = load_presets()
    base = find(presets, "balanced").sampling
    params = GenerationParams.from_spec(
        wire.spec_from_pb(text_pb2.GenerationSpec(sampling=text_pb2.SamplingParameters(temperature=0.3))),
        base, LIMITS)
    assert params.sampling.temperature == pytest.approx(0.3)
    assert params.sampling.top_p == base.top_p != 1.0


def test_vocabulary_checks():
    params = parse(logit_bias=[text_pb2.LogitBias(token_id=500, bias=1)])
    params.check_against_vocab(1000)
    with pytest.raises(InvalidArgument) as raised:
        params.check_against_vocab(400)
    assert raised.value.field == "spec.logit_bias[0].token_id"


def test_every_shipped_preset_is_valid_and_unknown_ones_are_refused():
    presets = load_presets()
    assert {"balanced", "neutral", "greedy", "creative", "focused"} <= set(presets)
    assert presets["greedy"].sampling.temperature == 0
    with pytest.raises(InvalidArgument) as raised:
        find(presets, "nope")
    assert raised.value.field == "spec.preset"


def test_sampler_convention_defaults_to_fabula_and_is_taken_from_the_request_or_preset():
    assert parse().sampling.sampler_convention == SamplerConvention.FABULA
    chosen = parse(sampling=text_pb2.SamplingParameters(
        sampler_convention=text_pb2.SAMPLER_CONVENTION_KOBOLDCPP))
    assert chosen.sampling.sampler_convention == SamplerConvention.KOBOLDCPP
    # Unspecified (0) leaves the preset's convention in place; a preset file names it.
    base = SamplingParams.from_mapping({"sampler_convention": "koboldcpp"}, "preset.")
    spec = wire.spec_from_pb(text_pb2.GenerationSpec(sampling=text_pb2.SamplingParameters(
        sampler_convention=text_pb2.SAMPLER_CONVENTION_UNSPECIFIED)))
    kept = GenerationParams.from_spec(spec, base, LIMITS)
    assert kept.sampling.sampler_convention == SamplerConvention.KOBOLDCPP


@pytest.mark.parametrize("value", ["llamacpp", 99, True, None])
def test_unknown_sampler_convention_names_the_field(value):
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping({"sampler_convention": value}, "spec.sampling.")
    assert raised.value.field == "spec.sampling.sampler_convention"
    with pytest.raises(InvalidArgument) as raised:
        parse(sampling=text_pb2.SamplingParameters(sampler_convention=99))
    assert raised.value.field == "spec.sampling.sampler_convention"
