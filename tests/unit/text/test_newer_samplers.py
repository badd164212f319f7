"""Mirostat, classifier-free guidance, the phrase repetition penalty, unified sampling, DRY, XTC and
penalties placed in the order, each against a distribution worked out by hand from its definition."""

from __future__ import annotations

import math

import pytest
import torch

from services.text import samplers
from services.text.params import PhraseRepetitionPenalty, SamplerName, SamplingParams, parse_order
from services.toolkit.errors import InvalidArgument


def logits_of(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def distribution(cand: samplers.Candidates) -> dict[int, float]:
    return {int(token): float(p) for token, p in zip(cand.ids, cand.probs())}


def full(logits: torch.Tensor) -> samplers.Candidates:
    return samplers.Candidates.from_logits(logits)


# --- XTC ---------------------------------------------------------------------------------------


def test_xtc_removes_every_top_choice_but_the_least_likely():
    cand = full(logits_of(0.4, 0.3, 0.2, 0.1))
    out = samplers.apply_xtc(cand, 0.15, 1.0, torch.Generator().manual_seed(0))
    # 0.4, 0.3 and 0.2 are top choices; 0.2 stays with 0.1: 2/3 and 1/3.
    assert distribution(out) == pytest.approx({2: 2 / 3, 3: 1 / 3})


def test_xtc_needs_two_top_choices_and_a_threshold_two_tokens_can_pass():
    cand = full(logits_of(0.4, 0.3, 0.2, 0.1))
    assert samplers.apply_xtc(cand, 0.35, 1.0, torch.Generator().manual_seed(0)) is cand
    assert samplers.apply_xtc(cand, 0.51, 1.0, torch.Generator().manual_seed(0)) is cand
    assert SamplingParams(xtc_probability=1.0, xtc_threshold=0.6).step_is_off(SamplerName.XTC)


def test_xtc_runs_with_its_probability_from_the_sequence_generator():
    cand = full(logits_of(0.4, 0.3, 0.2, 0.1))
    roll = float(torch.rand(1, generator=torch.Generator().manual_seed(3)))
    below, above = roll + 0.01, roll - 0.01  # the roll runs XTC only when it is under the probability
    assert len(samplers.apply_xtc(cand, 0.15, below, torch.Generator().manual_seed(3))) == 2
    assert len(samplers.apply_xtc(cand, 0.15, above, torch.Generator().manual_seed(3))) == 4


# --- unified -------------------------------------------------------------------------------------


def test_unified_linear_is_an_inverse_temperature():
    cand = full(logits_of(0.5, 0.25, 0.25))
    out = samplers.apply_unified(cand, SamplingParams(unified_linear=0.5))
    # p^0.5: 0.7071, 0.5, 0.5 → normalised.
    total = math.sqrt(0.5) + 2 * 0.5
    assert distribution(out) == pytest.approx({0: math.sqrt(0.5) / total, 1: 0.5 / total, 2: 0.5 / total})


def test_unified_quad_and_conf_follow_the_formula():
    ln2 = math.log(2)
    cand = full(logits_of(0.5, 0.25, 0.25))
    # quad 1: l - l^2 with l = -ln2 and -2 ln2.
    out = samplers.apply_unified(cand, SamplingParams(unified_quad=1.0))
    first, rest = math.exp(-ln2 - ln2 ** 2), math.exp(-2 * ln2 - 4 * ln2 ** 2)
    assert distribution(out) == pytest.approx({0: first / (first + 2 * rest), 1: rest / (first + 2 * rest),
                                               2: rest / (first + 2 * rest)})
    # linear 0, conf 1: the factor is the entropy, 1.5 ln2 nats.
    out = samplers.apply_unified(cand, SamplingParams(unified_linear=0.0, unified_conf=1.0))
    factor = 1.5 * ln2
    first, rest = 0.5 ** factor, 0.25 ** factor
    assert distribution(out) == pytest.approx({0: first / (first + 2 * rest), 1: rest / (first + 2 * rest),
                                               2: rest / (first + 2 * rest)})


def test_unified_with_a_negative_factor_reverses_the_order_and_keeps_the_set_sorted():
    cand = full(logits_of(0.5, 0.3, 0.2))
    out = samplers.apply_unified(cand, SamplingParams(unified_linear=0.0, unified_conf=-1.0))
    assert out.ids.tolist() == [2, 1, 0]
    assert torch.all(out.logits[:-1] >= out.logits[1:])


def test_unified_on_the_row_leaves_banned_tokens_banned():
    row = torch.tensor([1.0, float("-inf"), 0.0])
    out = samplers.unified_logits(row, 0.0, 1.0, -1.0)
    assert out[1] == float("-inf") and torch.isfinite(out[[0, 2]]).all()


# --- mirostat ------------------------------------------------------------------------------------


def test_mirostat_v2_keeps_the_tokens_no_more_surprising_than_mu_and_learns():
    # Surprises 1, 2, 3, 3 bits.
    cand = full(logits_of(0.5, 0.25, 0.125, 0.125))
    params = SamplingParams(mirostat=2, mirostat_tau=2.5, mirostat_eta=0.1)
    state = samplers.SamplerState()
    # mu starts at 2 * tau = 5 bits: everything stays.
    assert len(samplers.apply_mirostat(cand, params, state)) == 4 and state.mu == 5.0
    state.mu = 2.5
    out = samplers.apply_mirostat(cand, params, state)
    assert distribution(out) == pytest.approx({0: 2 / 3, 1: 1 / 3})
    samplers.observe(out, 1, params, state)
    # Drawn at 1/3: surprise log2(3); mu moves by -eta * (surprise - tau).
    assert state.mu == pytest.approx(2.5 - 0.1 * (math.log2(3) - 2.5))
    assert not state.mirostat_ran


def test_mirostat_v1_estimates_the_zipf_exponent_and_keeps_k_tokens():
    # An exact Zipf row with s = 2 over a 4-token vocabulary: s_hat = 2, e = 1,
    # k = (2^mu / (1 - 4^-1))^(1/2).
    weights = [1 / (i + 1) ** 2 for i in range(4)]
    total = sum(weights)
    cand = full(logits_of(*(w / total for w in weights)))
    params = SamplingParams(mirostat=1, mirostat_tau=5.0)
    state = samplers.SamplerState(mu=2.0)
    # k = (4 / 0.75)^0.5 = 2.31 → 2 tokens.
    assert samplers.apply_mirostat(cand, params, state).ids.tolist() == [0, 1]
    state.mu = 10.0  # k = (1024 / 0.75)^0.5 = 36.9 → all 4
    assert len(samplers.apply_mirostat(cand, params, state)) == 4


def test_mirostat_is_seeded_and_deterministic_through_warp():
    row = torch.randn(200, generator=torch.Generator().manual_seed(1)) * 3
    params = SamplingParams(mirostat=2, mirostat_tau=3.0, temperature=0.9)

    def run() -> tuple[list[int], float]:
        state = samplers.SamplerState(generator=torch.Generator().manual_seed(7))
        tokens = []
        for _ in range(20):
            cand = samplers.warp(row.clone(), params, state)
            token = samplers.draw(cand, state.generator)
            samplers.observe(cand, token, params, state)
            tokens.append(token)
        assert state.mu is not None
        return tokens, state.mu

    assert run() == run()


# --- classifier-free guidance ------------------------------------------------------------------


def test_guidance_is_uncond_plus_scale_times_the_difference_of_log_probabilities():
    cond, uncond = logits_of(0.5, 0.3, 0.2), logits_of(0.2, 0.3, 0.5)
    guided = samplers.apply_guidance(cond, uncond, 1.5)
    # p ∝ cond^1.5 * uncond^-0.5.
    weights = [0.5 ** 1.5 * 0.2 ** -0.5, 0.3 ** 1.5 * 0.3 ** -0.5, 0.2 ** 1.5 * 0.5 ** -0.5]
    assert torch.softmax(guided, -1).tolist() == pytest.approx([w / sum(weights) for w in weights], rel=1e-5)
    # Scale 1 is the conditional distribution itself.
    assert torch.softmax(samplers.apply_guidance(cond, uncond, 1.0), -1).tolist() == pytest.approx([0.5, 0.3, 0.2])


# --- DRY and the phrase repetition penalty ------------------------------------------------------


def test_repeat_lengths_find_the_longest_repeat_each_token_would_extend():
    context = torch.tensor([1, 2, 3, 4, 1, 2, 3])
    assert samplers.repeat_lengths(context) == {4: 3}
    # A second, shorter occurrence does not lower it; the longest wins.
    assert samplers.repeat_lengths(torch.tensor([9, 3, 5, 1, 2, 3, 4, 1, 2, 3])) == {5: 1, 4: 3}
    # A breaker inside the repeat ends it; a breaker as the next token or last token means none.
    assert samplers.repeat_lengths(context, frozenset({2})) == {4: 1}
    assert samplers.repeat_lengths(context, frozenset({4})) == {}
    assert samplers.repeat_lengths(context, frozenset({3})) == {}


def test_dry_subtracts_multiplier_times_base_to_the_excess_length():
    context = torch.tensor([1, 2, 3, 4, 1, 2, 3])
    logits = torch.zeros(6)
    params = SamplingParams(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    out = samplers.apply_dry(logits.clone(), context, params, frozenset())
    # Repeat of 3 extended by token 4: 0.8 * 1.75^(3 - 2) = 1.4.
    assert out.tolist() == pytest.approx([0, 0, 0, 0, -1.4, 0])
    # At or under the allowed length: nothing.
    assert torch.equal(samplers.apply_dry(logits.clone(), context, SamplingParams(dry_multiplier=0.8,
                                                                                  dry_allowed_length=4),
                                          frozenset()), logits)
    # Only the last 4 tokens are searched: token 3 has no earlier occurrence there.
    assert torch.equal(samplers.apply_dry(logits.clone(), context, SamplingParams(dry_multiplier=0.8,
                                                                                  dry_penalty_last_n=4),
                                          frozenset()), logits)


def test_dry_penalty_of_a_very_long_repeat_stays_finite():
    context = torch.tensor([1, 2] * 600)
    out = samplers.apply_dry(torch.zeros(3), context, SamplingParams(dry_multiplier=100, dry_base=10), frozenset())
    assert torch.isfinite(out).all() and out[1] < -1e30


@pytest.mark.parametrize(("level", "expected"), [
    (PhraseRepetitionPenalty.OFF, 0.0),
    (PhraseRepetitionPenalty.LIGHT, 0.0),  # a 3-token repeat is under its 4
    (PhraseRepetitionPenalty.MEDIUM, -1.5),  # 1.5 * min(3 / 3, 2)
    (PhraseRepetitionPenalty.VERY_AGGRESSIVE, -5.25),  # 3.5 * min(3 / 2, 2)
])
def test_phrase_repetition_penalty_levels(level, expected):
    context = torch.tensor([5, 6, 7, 8, 5, 6, 7])
    out = samplers.apply_phrase_repetition_penalty(torch.zeros(10), context, level)
    assert float(out[8]) == pytest.approx(expected)
    assert float(out.sum()) == pytest.approx(expected)  # no other token is touched


# --- penalties in the order ---------------------------------------------------------------------


def test_a_penalty_placed_after_a_truncation_changes_the_kept_set_not_the_cut():
    row = torch.tensor([3.0, 2.0, 1.0, 0.0])
    state = samplers.SamplerState(context=torch.tensor([0]))
    first = SamplingParams(repetition_penalty=4.0, top_k=2)
    # Default order: the penalty runs first (3 / 4 = 0.75), top-2 keeps tokens 1 and 2.
    lead = samplers.leading_penalties(first)
    assert lead == [SamplerName.REPETITION_PENALTY]
    penalised = samplers.penalise_row(lead[0], row.clone(), first, state)
    assert sorted(samplers.warp(penalised, first, state, skip=1).ids.tolist()) == [1, 2]
    # Placed after top_k: top-2 keeps tokens 0 and 1, then token 0 drops to 0.75 below token 1.
    order = parse_order(["temperature", "top_k", "repetition_penalty", "top_a", "top_p", "typical_p",
                         "tail_free", "min_p"], "sampler_order")
    after = SamplingParams(repetition_penalty=4.0, top_k=2, order=order)
    assert samplers.leading_penalties(after) == []
    out = samplers.warp(row.clone(), after, state)
    assert out.ids.tolist() == [1, 0] and out.logits.tolist() == pytest.approx([2.0, 0.75])


def test_orders_name_the_classic_warpers_and_the_newer_steps_take_their_default_places():
    order = parse_order(["xtc", "min_p", "tail_free", "typical_p", "top_p", "top_a", "top_k", "temperature"],
                        "sampler_order")
    names = [name.key for name, _ in order]
    assert names[:3] == ["repetition_penalty", "phrase_repetition_penalty", "dry"]
    assert names[3:5] == ["xtc", "min_p"]
    assert names[-2:] == ["unified", "mirostat"]
    with pytest.raises(InvalidArgument) as raised:
        parse_order(["mirostat", "dry"], "spec.sampling.sampler_order")
    assert raised.value.field == "spec.sampling.sampler_order"


@pytest.mark.parametrize(("values", "field"), [
    ({"dry_sequence_breakers": "abc"}, "s.dry_sequence_breakers"),
    ({"dry_sequence_breakers": ["ok", ""]}, "s.dry_sequence_breakers[1]"),
    ({"dry_sequence_breakers": ["x" * 65]}, "s.dry_sequence_breakers[0]"),
    ({"cfg_uc": 3}, "s.cfg_uc"),
    ({"mirostat": 3}, "s.mirostat"),
    ({"dry_base": 1.0}, "s.dry_base"),
    ({"phrase_repetition_penalty": "loud"}, "s.phrase_repetition_penalty"),
])
def test_bad_values_of_the_newer_samplers_name_the_field(values, field):
    with pytest.raises(InvalidArgument) as raised:
        SamplingParams.from_mapping(values, "s.")
    assert raised.value.field == field


def test_xtc_and_the_seeded_draw_replay_with_the_same_seed():
    row = torch.randn(300, generator=torch.Generator().manual_seed(2)) * 2
    params = SamplingParams(xtc_probability=0.5, xtc_threshold=0.05, dry_multiplier=0.8, min_p=0.01)

    def run(seed: int) -> list[int]:
        state = samplers.SamplerState(generator=torch.Generator().manual_seed(seed),
                                      context=torch.tensor([4, 5, 6, 4, 5]))
        return [samplers.draw(samplers.warp(row.clone(), params, state), state.generator) for _ in range(30)]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize(("name", "value"), [("frequency_penalty", -0.5), ("presence_penalty", -1.0),
                                             ("unified_conf", -0.05)])
def test_negative_values_inside_a_range_that_reaches_below_zero_are_accepted(name, value):
    assert getattr(SamplingParams.from_mapping({name: value}, "s."), name) == value
