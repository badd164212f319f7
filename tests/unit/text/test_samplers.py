"""Every sampler changes the distribution the way its definition says, on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from services.text import samplers
from services.text.params import SamplerConvention, SamplerName, SamplingParams, parse_order


def logits_for(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is `probs` (a distribution in any order)."""
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def kept(cand: samplers.Candidates) -> set[int]:
    return set(cand.ids.tolist())


def only(**values) -> SamplingParams:
    """Params with every warper off except the ones given."""
    return SamplingParams(**values)


PROBS = [0.1, 0.5, 0.02, 0.3, 0.08]  # token 1 most likely, then 3, 0, 4, 2


def test_no_warper_keeps_the_distribution():
    cand = samplers.warp(logits_for(PROBS), only())
    assert len(cand) == len(PROBS)
    assert torch.allclose(torch.softmax(cand.logits, -1)[cand.ids.argsort()], torch.tensor(PROBS), atol=1e-6)


def test_temperature_scales_log_probabilities():
    logits = logits_for(PROBS)
    for temperature in (0.5, 2.0):
        cand = samplers.warp(logits, only(temperature=temperature))
        probs = dict(zip(cand.ids.tolist(), cand.probs().tolist()))
        expected = torch.softmax(logits / temperature, -1)
        for token, p in probs.items():
            assert p == pytest.approx(float(expected[token]), rel=1e-5)
    cold = samplers.warp(logits, only(temperature=0.5)).probs().max()
    hot = samplers.warp(logits, only(temperature=2.0)).probs().max()
    assert cold > max(PROBS) > hot


def test_temperature_zero_is_greedy():
    cand = samplers.warp(logits_for(PROBS), only(temperature=0.0))
    assert kept(cand) == {1}


@pytest.mark.parametrize(("k", "expected"), [(1, {1}), (2, {1, 3}), (3, {1, 3, 0}), (5, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_most_likely(k, expected):
    assert kept(samplers.warp(logits_for(PROBS), only(top_k=k))) == expected


@pytest.mark.parametrize(("p", "expected"), [(0.4, {1}), (0.79, {1, 3}), (0.81, {1, 3, 0}), (0.95, {1, 3, 0, 4})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(samplers.warp(logits_for(PROBS), only(top_p=p))) == expected


def test_top_p_renormalises():
    cand = samplers.warp(logits_for(PROBS), only(top_p=0.79))
    probs = dict(zip(cand.ids.tolist(), cand.probs().tolist()))
    assert probs[1] == pytest.approx(0.5 / 0.8, rel=1e-5)
    assert probs[3] == pytest.approx(0.3 / 0.8, rel=1e-5)


@pytest.mark.parametrize(("a", "expected"), [(0.3, {1, 3, 0, 4}), (0.5, {1, 3}), (1.0, {1, 3}), (1.5, {1})])
def test_top_a_threshold_is_a_times_max_squared(a, expected):
    # threshold = a * 0.5^2: a=0.3 → 0.075; a=0.5 → 0.125; a=1 → 0.25; a=1.5 (beyond the API's
    # range, to show the cut) → 0.375
    assert kept(samplers.warp(logits_for(PROBS), only(top_a=a))) == expected


@pytest.mark.parametrize("min_p", [0.1, 0.2, 0.25, 0.7])
def test_min_p_threshold_is_relative_to_the_top(min_p):
    expected = {t for t, p in enumerate(PROBS) if p >= min_p * 0.5 - 1e-7}
    assert kept(samplers.warp(logits_for(PROBS), only(min_p=min_p))) == expected


def reference_typical(probs: list[float], mass: float) -> set[int]:
    entropy = -sum(p * math.log(p) for p in probs)
    order = sorted(range(len(probs)), key=lambda t: abs(-math.log(probs[t]) - entropy))
    chosen, total = set(), 0.0
    for token in order:
        chosen.add(token)
        total += probs[token]
        if total >= mass:
            break
    return chosen


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9])
def test_typical_p_keeps_tokens_closest_to_the_entropy(mass):
    assert kept(samplers.warp(logits_for(PROBS), only(typical_p=mass))) == reference_typical(PROBS, mass)


def test_typical_p_can_drop_the_most_likely_token():
    # One dominant token far more likely than typical: its surprisal is far below the entropy.
    probs = [0.3] + [0.7 / 30] * 30
    cand = samplers.warp(logits_for(probs), only(typical_p=0.3))
    assert 0 not in kept(cand)


def test_tail_free_cuts_where_the_curve_flattens():
    # sorted probs 0.4 .3 .2 .05 .03 .02: |second differences| 0, .05, .13, .01 → cdf 0, .263, .947, 1
    probs = [0.05, 0.4, 0.02, 0.3, 0.03, 0.2]
    assert kept(samplers.warp(logits_for(probs), only(tail_free=0.9))) == {1, 3, 5}
    assert kept(samplers.warp(logits_for(probs), only(tail_free=0.95))) == {1, 3, 5, 0}
    assert kept(samplers.warp(logits_for(probs), only(tail_free=0.1))) == {1, 3}


def test_sampler_order_is_honoured():
    logits = logits_for(PROBS)
    # top_p 0.79 keeps {1, 3} at temperature 1; after a hot temperature the top two hold less
    # than 0.79, so top_p after temperature keeps more.
    first_top_p = parse_order(["top_p", "temperature", "top_k", "top_a", "typical_p", "tail_free", "min_p"], "o")
    first_temp = parse_order(["temperature", "top_p", "top_k", "top_a", "typical_p", "tail_free", "min_p"], "o")
    a = samplers.warp(logits, only(temperature=3.0, top_p=0.79, order=first_top_p))
    b = samplers.warp(logits, only(temperature=3.0, top_p=0.79, order=first_temp))
    assert kept(a) == {1, 3}
    assert len(b) > 2
    assert samplers.active_warpers(only(temperature=3.0, top_p=0.79, order=first_top_p))[:2] == [
        SamplerName.TOP_P, SamplerName.TEMPERATURE]


def test_disabled_sampler_is_skipped():
    order = parse_order([{"sampler": "top_k", "enabled": False}, "temperature", "top_p", "top_a",
                         "typical_p", "tail_free", "min_p"], "o")
    assert len(samplers.warp(logits_for(PROBS), only(top_k=1, order=order))) == len(PROBS)
    assert len(samplers.warp(logits_for(PROBS), only(top_k=1))) == 1


def test_top_k_shortcut_matches_full_sort():
    torch.manual_seed(0)
    logits = torch.randn(5000)
    fast = samplers.warp(logits, only(top_k=50, top_p=0.9))
    order = parse_order(["top_p", "top_k", "temperature", "top_a", "typical_p", "tail_free", "min_p"], "o")
    # top_p first then top_k is a different pipeline; compare with top_k first done by a full sort
    full = samplers.Candidates.from_logits(logits)
    full = samplers.apply_top_p(samplers.apply_top_k(full, 50), 0.9)
    assert kept(fast) == kept(full)
    assert len(samplers.warp(logits, only(top_k=50, top_p=0.9, order=order))) <= 50


def test_draw_is_reproducible_with_the_same_seed_and_follows_probabilities():
    cand = samplers.warp(logits_for(PROBS), only())
    first = [samplers.draw(cand, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(first)) == 1
    generator = torch.Generator().manual_seed(1)
    counts = torch.bincount(torch.tensor([samplers.draw(cand, generator) for _ in range(4000)]), minlength=5)
    assert torch.allclose(counts / 4000, torch.tensor(PROBS), atol=0.03)


@pytest.mark.parametrize("values", [dict(temperature=0.7), dict()])
def test_a_draw_of_zero_never_picks_a_zero_probability_token(values):
    # Nothing truncates (temperature only, or nothing at all), so the draw runs on the whole
    # unsorted row, where the banned token comes first with a CDF of 0.
    cand = samplers.warp(torch.tensor([samplers.NEG_INF, 1.0, 2.0, 0.5]), only(**values))
    assert samplers.pick(cand, torch.tensor([0.0])) == 1
    # And at the very top of the range, rounding must not push the draw past the last token
    # with any probability.
    row = torch.tensor([1.0, 2.0, samplers.NEG_INF, samplers.NEG_INF])
    top = torch.nextafter(torch.tensor([1.0]), torch.tensor([0.0]))
    assert samplers.pick(samplers.warp(row, only(**values)), top) == 1


def test_seeded_draws_follow_the_inverse_cdf_of_the_generator():
    # draw() takes exactly one uniform number per call from the request's generator.
    cand = samplers.warp(logits_for(PROBS), only())
    drawing, reading = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(50):
        assert samplers.draw(cand, drawing) == samplers.pick(cand, torch.rand(1, generator=reading))


@pytest.mark.parametrize(("logits", "k", "fabula", "koboldcpp"), [
    ([3.0, 2.0, 2.0, 2.0, 1.0], 2, {0, 1, 2, 3}, 2),
    ([3.0, 2.0, 2.0, 1.0], 3, {0, 1, 2}, 3),
    ([1.0, 1.0, 1.0], 1, {0, 1, 2}, 1),
])
def test_top_k_ties_under_each_convention(logits, k, fabula, koboldcpp):
    row = torch.tensor(logits)
    assert kept(samplers.warp(row, only(top_k=k))) == fabula
    cpp = samplers.warp(row, only(top_k=k, sampler_convention=SamplerConvention.KOBOLDCPP))
    assert len(cpp) == koboldcpp
    assert sorted(cpp.logits.tolist(), reverse=True) == sorted(logits, reverse=True)[:k]


def test_typical_p_keeps_tokens_tied_with_the_last_one_needed():
    # Three equal tokens are equally typical: the first one reaches the mass, all three stay.
    row = logits_for([0.3, 0.3, 0.3, 0.1])
    assert kept(samplers.warp(row, only(typical_p=0.2))) == {0, 1, 2}
    cpp = samplers.warp(row, only(typical_p=0.2, sampler_convention=SamplerConvention.KOBOLDCPP))
    assert len(cpp) == 1


# --- penalties and biases ----------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    out = samplers.apply_penalties(logits.clone(), [0, 1], only(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 2.0, -2.0]


def test_repetition_penalty_range_only_looks_at_recent_tokens():
    logits = torch.ones(4)
    out = samplers.apply_penalties(logits.clone(), [0, 1, 2], only(repetition_penalty=2.0, repetition_penalty_range=2))
    assert out.tolist() == [1.0, 0.5, 0.5, 1.0]


def test_repetition_whitelist_is_spared():
    out = samplers.apply_penalties(torch.ones(4), [0, 1], only(repetition_penalty=2.0, repetition_penalty_whitelist=(1,)))
    assert out.tolist() == [0.5, 1.0, 1.0, 1.0]


def test_repetition_slope_penalises_older_tokens_less():
    params = only(repetition_penalty=3.0, repetition_penalty_range=8, repetition_penalty_slope=2.0)
    out = samplers.apply_penalties(torch.ones(8), list(range(8)), params)
    # token i sits at window position i (oldest first): strength grows towards the newest
    assert all(out[i] >= out[i + 1] for i in range(7))
    assert out[7] == pytest.approx(1 / 3)
    assert out[0] == pytest.approx(1.0)
    flat = samplers.apply_penalties(torch.ones(8), list(range(8)), only(repetition_penalty=3.0, repetition_penalty_range=8))
    assert torch.allclose(flat, torch.full((8,), 1 / 3))


def test_flat_repetition_penalty_with_counts_and_whitelist():
    # slope 0 takes one factor for every token; the counts still come per token, and a
    # whitelisted token is neither divided nor counted.
    params = only(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=1.0,
                  repetition_penalty_whitelist=(2,))
    out = samplers.apply_penalties(torch.tensor([2.0, -2.0, 3.0, 1.0]), [0, 1, 1, 2], params)
    assert out.tolist() == [2.0 / 2 - 0.5 - 1.0, -2.0 * 2 - 0.5 * 2 - 1.0, 3.0, 1.0]


def test_frequency_and_presence_penalties():
    out = samplers.apply_penalties(torch.zeros(3), [0, 0, 0, 1], only(frequency_penalty=0.5, presence_penalty=1.0))
    assert out.tolist() == [-2.5, -1.5, 0.0]
    negative = samplers.apply_penalties(torch.zeros(3), [2, 2], only(frequency_penalty=-0.5))
    assert negative.tolist() == [0.0, 0.0, 1.0]


def test_logit_bias_adds_to_the_token():
    out = samplers.apply_logit_bias(torch.zeros(4), torch.tensor([1, 3]), torch.tensor([5.0, -100.0]))
    assert out.tolist() == [0.0, 5.0, 0.0, -100.0]


def test_phrase_bias_follows_the_phrase():
    phrase = ((5, 6, 7), 4.0)
    assert samplers.apply_phrase_bias(torch.zeros(10), [1, 2], [phrase]).nonzero().flatten().tolist() == [5]
    assert samplers.apply_phrase_bias(torch.zeros(10), [1, 5], [phrase]).nonzero().flatten().tolist() == [6]
    assert samplers.apply_phrase_bias(torch.zeros(10), [5, 6], [phrase]).nonzero().flatten().tolist() == [7]
    # After the whole phrase it starts over at its first token.
    assert samplers.apply_phrase_bias(torch.zeros(10), [5, 6, 7], [phrase]).nonzero().flatten().tolist() == [5]


@pytest.mark.parametrize("flatness", [0.3, 1.0, 4.0])
@pytest.mark.parametrize(("name", "params", "reference"), [
    ("top_p", dict(top_p=0.9), lambda c: samplers.apply_top_p(c, 0.9)),
    ("min_p", dict(min_p=0.02), lambda c: samplers.apply_min_p(c, 0.02)),
    ("top_a", dict(top_a=0.05), lambda c: samplers.apply_top_a(c, 0.05)),
])
def test_first_truncation_shortcut_matches_the_full_sort(name, params, reference, flatness):
    # From peaked to nearly flat rows, so the shortcut has to grow k several times.
    torch.manual_seed(3)
    logits = torch.randn(49152) * (3 / flatness)
    fast = samplers.warp(logits, only(**params))
    full = reference(samplers.Candidates.from_logits(logits))
    assert kept(fast) == kept(full)
    assert torch.allclose(fast.probs().sort().values, full.probs().sort().values, atol=1e-6)
