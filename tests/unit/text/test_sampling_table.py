"""The sampling table (`SAMPLING_FIELDS`, declared on `SamplingParams`) is the one source of each
control's neutral value and range: validation refuses exactly what it excludes, naming the field,
and a control at its neutral value changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from services.text import samplers
from services.text.params import (
    GREEDY_TEMPERATURE,
    SAMPLING_FIELDS,
    Choice,
    PhraseRepetitionPenalty,
    Range,
    SamplerConvention,
    SamplerName,
    SamplingParams,
)
from services.toolkit.errors import InvalidArgument

PREFIX = "spec.sampling."
LOGITS = torch.log(torch.tensor([0.1, 0.5, 0.02, 0.3, 0.08]))
NUMERIC = sorted(name for name, field in SAMPLING_FIELDS.items() if isinstance(field.allowed, Range))
CHOICES = sorted(name for name, field in SAMPLING_FIELDS.items() if isinstance(field.allowed, Choice))


def outside(allowed: Range) -> list[float]:
    """Values just outside the range on each side (the bound itself where it is excluded)."""
    step = 1 if allowed.integer else 1e-3
    below = allowed.low if allowed.low_open else allowed.low - step
    above = allowed.high if allowed.high_open else allowed.high + step
    return [below, above]


def inside(allowed: Range) -> list[float]:
    """The bounds where they are included, else values just inside them."""
    step = 1 if allowed.integer else 1e-3
    return [allowed.low + step if allowed.low_open else allowed.low,
            allowed.high - step if allowed.high_open else allowed.high]


@pytest.mark.parametrize("name", sorted(SAMPLING_FIELDS))
def test_the_defaults_are_the_neutral_values(name):
    assert getattr(SamplingParams(), name) == SAMPLING_FIELDS[name].neutral
    assert SamplingParams().is_off(name)
    assert SAMPLING_FIELDS[name].doc


@pytest.mark.parametrize("name", NUMERIC)
def test_validation_refuses_what_the_range_excludes_and_names_the_field(name):
    allowed = SAMPLING_FIELDS[name].allowed
    for value in outside(allowed):
        with pytest.raises(InvalidArgument) as raised:
            SamplingParams.from_mapping({name: value}, PREFIX)
        assert raised.value.field == f"{PREFIX}{name}"
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping({name: math.nan}, PREFIX)
    assert raised.value.field == f"{PREFIX}{name}"


@pytest.mark.parametrize("name", NUMERIC)
def test_validation_accepts_the_range_and_the_neutral_value(name):
    field = SAMPLING_FIELDS[name]
    for value in [*inside(field.allowed), field.neutral]:
        assert getattr(SamplingParams.from_mapping({name: value}, PREFIX), name) == value


@pytest.mark.parametrize("name", CHOICES)
def test_a_choice_accepts_its_members_by_name_and_refuses_anything_else(name):
    kind = SAMPLING_FIELDS[name].allowed.kind
    for member in kind:
        assert getattr(SamplingParams.from_mapping({name: member.key}, PREFIX), name) is member
    for value in ("nope", 1, 1.0, None):
        with pytest.raises(InvalidArgument) as raised:
            SamplingParams.from_mapping({name: value}, PREFIX)
        assert raised.value.field == f"{PREFIX}{name}"


def test_the_choices_are_rows_of_the_table():
    assert CHOICES == ["phrase_repetition_penalty", "sampler_convention"]
    assert SAMPLING_FIELDS["sampler_convention"].neutral is SamplerConvention.FABULA
    assert SAMPLING_FIELDS["phrase_repetition_penalty"].neutral is PhraseRepetitionPenalty.OFF


def test_every_orderable_step_has_its_controls_in_the_table():
    for name in SamplerName:
        assert name.controls and set(name.controls) <= set(SAMPLING_FIELDS)


def test_all_neutral_runs_no_warper_and_leaves_the_distribution_alone():
    neutral = SamplingParams()
    assert samplers.active_warpers(neutral) == []
    cand = samplers.warp(LOGITS.clone(), neutral)
    assert torch.equal(cand.logits[torch.argsort(cand.ids)], LOGITS)


@pytest.mark.parametrize("name", list(SamplerName))
def test_a_neutral_warper_changes_nothing(name):
    cand = samplers.Candidates.from_logits(LOGITS)
    out = samplers.WARPERS[name](cand, SamplingParams())
    assert torch.equal(out.ids, cand.ids) and torch.equal(out.logits, cand.logits)


def test_neutral_penalties_change_nothing():
    context = torch.tensor([1, 1, 3, 0, 1])
    assert not SamplingParams().has_penalties
    assert torch.equal(samplers.apply_penalties(LOGITS.clone(), context, SamplingParams()), LOGITS)
    # Range and slope alone do nothing without a penalty to shape.
    shaped_only = SamplingParams(repetition_penalty_range=3, repetition_penalty_slope=2.0)
    assert torch.equal(samplers.apply_penalties(LOGITS.clone(), context, shaped_only), LOGITS)


def test_a_control_off_its_neutral_value_is_active():
    for name in SamplerName:
        for control in name.controls:
            field = SAMPLING_FIELDS[control]
            if isinstance(field.allowed, Choice):
                other = next(member for member in field.allowed.kind if member != field.neutral)
            else:
                other = next(value for value in inside(field.allowed) if value != field.neutral)
            assert samplers.active_warpers(SamplingParams(**{control: other})) == [name], control


def test_the_greedy_temperature_keeps_only_the_most_likely_token():
    cand = samplers.warp(LOGITS.clone(), SamplingParams(temperature=GREEDY_TEMPERATURE))
    assert cand.ids.tolist() == [int(torch.argmax(LOGITS))]


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 9e-7])
def test_a_temperature_too_small_to_divide_by_is_refused(temperature):
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping({"temperature": temperature}, "sampling.")
    assert raised.value.field == "sampling.temperature"
    assert SamplingParams.from_mapping({"temperature": 0.0}, "sampling.").temperature == 0.0
    assert SamplingParams.from_mapping({"temperature": 1e-6}, "sampling.").temperature == 1e-6
