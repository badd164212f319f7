"""The protobuf ⇄ domain translation: nothing lost either way, unset stays unset, and values the
domain does not know reach it to be refused by name."""

from __future__ import annotations

import pytest

from fabula.text.v1 import text_pb2
from services.text import wire
from services.text.params import GenerationSpec, SamplerConvention, SamplerName, SamplingParams
from services.text.presets_store import load_presets
from services.text.sequence import FinishReason
from services.toolkit.errors import InvalidArgument


@pytest.mark.parametrize("preset", sorted(load_presets()))
def test_sampling_survives_the_round_trip(preset):
    sampling = load_presets()[preset].sampling
    back = SamplingParams.from_mapping(wire.sampling_from_pb(wire.sampling_to_pb(sampling)), "sampling.")
    for name in ("temperature", "top_k", "min_p", "repetition_penalty_range", "repetition_penalty_whitelist",
                 "order", "sampler_convention"):
        expected = getattr(sampling, name)
        assert getattr(back, name) == (pytest.approx(expected) if isinstance(expected, float) else expected)


def test_an_empty_spec_leaves_every_optional_field_unset():
    assert wire.spec_from_pb(text_pb2.GenerationSpec()) == GenerationSpec()


def test_set_fields_arrive_and_the_input_is_prompt_or_context():
    message = text_pb2.GenerationSpec(
        model="m", preset="p", max_new_tokens=5, seed=0, stop_sequences=["x"],
        sampling=text_pb2.SamplingParameters(top_k=0, sampler_order=[text_pb2.SamplerStep(sampler=3, enabled=False)]),
        logit_bias=[text_pb2.LogitBias(token_id=4, bias=-1.5)], phrase_bias=[text_pb2.PhraseBias(phrase="a", bias=2)],
        context=text_pb2.StoryContext(story="s", lorebook=[text_pb2.LorebookEntry(keys=["k"], insertion_position=-2)]))
    spec = wire.spec_from_pb(message)
    assert (spec.model, spec.preset, spec.max_new_tokens, spec.seed) == ("m", "p", 5, 0)
    assert spec.sampling == {"top_k": 0, "sampler_order": [{"sampler": SamplerName.TOP_P, "enabled": False}]}
    assert spec.logit_bias == ((4, -1.5),) and spec.phrase_bias == (("a", 2.0),)
    assert spec.context.story == "s" and spec.context.lorebook[0].insertion_position == -2
    assert spec.context.authors_note_depth == 3  # the domain's default when unset
    assert wire.spec_from_pb(text_pb2.GenerationSpec(prompt="hi")).context is None


def test_an_unknown_sampler_number_is_refused_by_the_domain_naming_the_field():
    order = [text_pb2.SamplerStep(sampler=number) for number in (1, 2, 3, 4, 5, 6, 99)]
    values = wire.sampling_from_pb(text_pb2.SamplingParameters(sampler_order=order))
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping(values, "spec.sampling.")
    assert raised.value.field == "spec.sampling.sampler_order[6].sampler"


def test_every_domain_enum_value_has_its_protobuf_number():
    assert set(wire.SAMPLER_TO_PB) == set(SamplerName)
    assert set(wire.CONVENTION_TO_PB) == set(SamplerConvention)
    assert set(wire.FINISH_REASON_TO_PB) == set(FinishReason)
    assert len(set(wire.FINISH_REASON_TO_PB.values())) == len(FinishReason)


def test_the_sampler_convention_crosses_by_number_and_unspecified_is_unset():
    chosen = text_pb2.SamplingParameters(sampler_convention=text_pb2.SAMPLER_CONVENTION_KOBOLDCPP)
    assert wire.sampling_from_pb(chosen) == {"sampler_convention": SamplerConvention.KOBOLDCPP}
    unspecified = text_pb2.SamplingParameters(sampler_convention=text_pb2.SAMPLER_CONVENTION_UNSPECIFIED)
    assert wire.sampling_from_pb(unspecified) == {}
    koboldcpp = SamplingParams(sampler_convention=SamplerConvention.KOBOLDCPP)
    assert wire.sampling_to_pb(koboldcpp).sampler_convention == text_pb2.SAMPLER_CONVENTION_KOBOLDCPP
    values = wire.sampling_from_pb(text_pb2.SamplingParameters(sampler_convention=99))
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping(values, "spec.sampling.")
    assert raised.value.field == "spec.sampling.sampler_convention"


def test_the_newer_samplers_survive_the_round_trip():
    sampling = SamplingParams.from_mapping({
        "mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.25, "cfg_scale": 1.5, "cfg_uc": "dull",
        "phrase_repetition_penalty": "aggressive", "unified_linear": 0.5, "unified_quad": 0.25,
        "unified_conf": -0.5, "dry_multiplier": 0.75, "dry_base": 2.0, "dry_allowed_length": 3,
        "dry_penalty_last_n": 256, "dry_sequence_breakers": ["\n", "--"], "xtc_threshold": 0.25,
        "xtc_probability": 0.5,
        "sampler_order": ["dry", "temperature", "top_k", "top_a", "top_p", "typical_p", "tail_free", "min_p",
                          "xtc"]}, "sampling.")
    back = SamplingParams.from_mapping(wire.sampling_from_pb(wire.sampling_to_pb(sampling)), "sampling.")
    assert back == sampling
    # Unset breakers and an UNSPECIFIED level are left to the preset.
    assert wire.sampling_from_pb(text_pb2.SamplingParameters(phrase_repetition_penalty=0)) == {}
    assert "dry_sequence_breakers" not in wire.sampling_from_pb(text_pb2.SamplingParameters(mirostat=1))
    # An empty breaker list that is set stays set: no breakers at all.
    empty = wire.sampling_from_pb(text_pb2.SamplingParameters(dry_sequence_breakers=text_pb2.SequenceBreakers()))
    assert empty == {"dry_sequence_breakers": []}


def test_every_phrase_level_has_its_protobuf_number():
    from services.text.params import PhraseRepetitionPenalty

    assert set(wire.PHRASE_LEVEL_TO_PB) == set(PhraseRepetitionPenalty)
