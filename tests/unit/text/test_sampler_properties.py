"""Property tests: on random rows of logits with ties and -inf entries, every warper keeps what
the peer it follows would keep, under each sampler convention, and no draw ever lands on a token
with zero probability.

The references are written here from the peers' published definitions, in float64, on the whole
row: transformers' logits processors where they exist (top_k, top_p, min_p, typical_p,
temperature), KoboldAI's formulas for top-a, tail-free sampling and the repetition penalty slope,
KoboldCpp's (llama.cpp's) for its convention. Float32 rounding may legitimately decide a token
that sits on a threshold either way, so examples with a token within a hair of one are skipped
(`assume`). Where tied logits straddle a cut, a peer keeps an arbitrary one of them, so those
comparisons are of the kept logits, not of token ids.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from services.text import samplers
from services.text.params import SamplerConvention, SamplingParams

NEG_INF = float("-inf")
FABULA, KOBOLDCPP = SamplerConvention.FABULA, SamplerConvention.KOBOLDCPP
MARGIN = 1e-4  # how far from a threshold a token must be for float32 to decide it like float64

# Bounded and derandomised: the same examples every run, a few seconds for the whole file.
PROPERTY = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])

# A few repeated levels make ties common; -inf entries are banned or masked tokens.
LEVELS = [-3.0, -1.5, -0.5, 0.0, 0.25, 1.0, 2.0, 3.5]
entries = st.one_of(st.sampled_from(LEVELS), st.sampled_from(LEVELS), st.just(NEG_INF),
                    st.floats(-6, 6, width=32))
rows = st.lists(entries, min_size=2, max_size=24).filter(
    lambda row: sum(math.isfinite(x) for x in row) >= 1).map(lambda row: torch.tensor(row))
conventions = st.sampled_from([FABULA, KOBOLDCPP])


# --- helpers -------------------------------------------------------------------------------------


def warp(row: torch.Tensor, **values) -> samplers.Candidates:
    return samplers.warp(row.clone(), SamplingParams(**values))


def kept_ids(cand: samplers.Candidates) -> set[int]:
    return set(cand.ids.tolist())


def kept_logits(row: torch.Tensor, ids) -> list[float]:
    """The kept tokens' float32 log-probabilities, sorted: two tokens a peer cannot tell apart
    (tied logits, or logits too close for float32 to give them different probabilities) are
    interchangeable, so the comparison is of these values, not of which one was kept."""
    log_probs = torch.log_softmax(row.float(), dim=-1)
    return sorted(float(log_probs[i]) for i in ids)


def finite_ids(scores: torch.Tensor) -> set[int]:
    """The tokens a transformers processor left unmasked (it masks with -inf)."""
    return set(torch.nonzero(torch.isfinite(scores.reshape(-1))).flatten().tolist())


def processed(processor, row: torch.Tensor) -> torch.Tensor:
    return processor(None, row.double().reshape(1, -1).clone())


def probs64(row: torch.Tensor) -> torch.Tensor:
    return torch.softmax(row.double(), dim=-1)


def sorted_probs64(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole row's probabilities, most likely first, with the token ids."""
    values, ids = torch.sort(row.double(), descending=True, stable=True)
    return torch.softmax(values, dim=-1), ids


def away_from(values: torch.Tensor, threshold: float, margin: float = MARGIN) -> bool:
    return bool(((values - threshold).abs() > margin).all())


# --- truncations -------------------------------------------------------------------------------------


@PROPERTY
@given(rows, st.integers(1, 30))
def test_top_k_fabula_is_transformers(row, k):
    expected = finite_ids(processed(TopKLogitsWarper(top_k=k), row))
    assert kept_ids(warp(row, top_k=k)) == expected
    assert kept_ids(samplers.apply_top_k(samplers.Candidates.from_logits(row), k)) == expected


@PROPERTY
@given(rows, st.integers(1, 30))
def test_top_k_koboldcpp_keeps_exactly_k(row, k):
    finite = sorted((token for token in range(row.shape[0]) if math.isfinite(row[token])),
                    key=lambda token: float(row[token]), reverse=True)
    expected = kept_logits(row, finite[:k])
    for cand in (warp(row, top_k=k, sampler_convention=KOBOLDCPP),
                 samplers.apply_top_k(samplers.Candidates.from_logits(row), k, KOBOLDCPP)):
        assert kept_logits(row, cand.ids.tolist()) == expected


@PROPERTY
@given(rows, st.floats(0.05, 0.99))
def test_top_p_is_transformers(row, top_p):
    probs, _ = sorted_probs64(row)
    assume(away_from(torch.cumsum(probs, 0) - probs, top_p))
    expected = finite_ids(processed(TopPLogitsWarper(top_p=top_p), row))
    assert kept_logits(row, warp(row, top_p=top_p).ids.tolist()) == kept_logits(row, expected)


@PROPERTY
@given(rows, st.floats(0.01, 1.0))
def test_min_p_is_transformers(row, min_p):
    probs = probs64(row)
    assume(away_from(probs, min_p * float(probs.max()), 1e-6))
    expected = finite_ids(processed(MinPLogitsWarper(min_p=min_p), row))
    assert kept_ids(warp(row, min_p=min_p)) == expected


@PROPERTY
@given(rows, st.floats(0.01, 1.0))
def test_top_a_is_koboldai(row, top_a):
    # KoboldAI: remove the tokens whose probability is below top_a * (highest probability)^2.
    probs = probs64(row)
    threshold = top_a * float(probs.max()) ** 2
    assume(away_from(probs, threshold, 1e-6))
    expected = {token for token in range(row.shape[0]) if math.isfinite(row[token]) and probs[token] >= threshold}
    assert kept_ids(warp(row, top_a=top_a)) == expected


def distances64(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each finite token's |surprisal - entropy| and probability (inf, 0 for masked tokens)."""
    probs = probs64(row)
    log_probs = torch.log_softmax(row.double(), dim=-1)
    entropy = -(probs * log_probs).nansum()
    return (-log_probs - entropy).abs(), probs


def typical_is_decidable(row: torch.Tensor, mass: float) -> bool:
    """No cumulative mass within a hair of `mass`, and no two different logits nearly as typical
    (float32 could order those the other way round)."""
    distance, probs = distances64(row)
    finite = torch.isfinite(row)
    distance, probs, logits = distance[finite], probs[finite], row[finite]
    order = torch.argsort(distance, stable=True)
    if not away_from(torch.cumsum(probs[order], 0), mass):
        return False
    gaps = (distance[:, None] - distance[None, :]).abs()
    different = logits[:, None] != logits[None, :]
    return bool((gaps[different] > 1e-5).all())


@PROPERTY
@given(rows, st.floats(0.05, 0.99))
def test_typical_p_fabula_is_transformers(row, mass):
    assume(typical_is_decidable(row, mass))
    expected = finite_ids(processed(TypicalLogitsWarper(mass=mass), row))
    assert kept_ids(warp(row, typical_p=mass)) == expected


@PROPERTY
@given(rows, st.floats(0.05, 0.99))
def test_typical_p_koboldcpp_is_llama_cpp(row, mass):
    # llama.cpp: tokens by |surprisal - entropy|, kept up to and including the one whose mass
    # takes the running sum past `mass`.
    assume(typical_is_decidable(row, mass))
    distance, probs = distances64(row)
    finite = [token for token in range(row.shape[0]) if math.isfinite(row[token])]
    order = sorted(finite, key=lambda token: float(distance[token]))
    kept, total = [], 0.0
    for token in order:
        kept.append(token)
        total += float(probs[token])
        if total > mass:
            break
    cand = warp(row, typical_p=mass, sampler_convention=KOBOLDCPP)
    assert kept_logits(row, cand.ids.tolist()) == kept_logits(row, kept)


# --- tail-free sampling, after an optional top-k (so masked tokens are counted) ------------------


def koboldai_tail_free(row: torch.Tensor, z: float) -> list[int] | None:
    """KoboldAI's TFS on the whole (masked) row; None when a token sits on the cut."""
    probs, ids = sorted_probs64(row)
    curvature = probs.diff().diff().abs()
    total = float(curvature.sum())
    if total == 0:
        # KoboldAI divides 0 by 0 and drops the row's last token; Fabula keeps a flat row whole.
        return [int(token) for token in ids if math.isfinite(row[token])]
    if total < 1e-5:
        return None  # a curve this flat is below float32's resolution of the probabilities
    cdf = torch.cumsum(curvature / total, 0)
    if not away_from(cdf, z, 1e-6):
        return None
    remove = torch.cat([torch.tensor([False]), cdf > z, torch.tensor([True])])
    return [int(token) for token, gone in zip(ids, remove) if not gone and math.isfinite(row[token])]


def llama_cpp_tail_free(row: torch.Tensor, survivors: list[int], z: float) -> list[int] | None:
    """llama.cpp's TFS on the candidate list (token ids, most likely first); None when a token
    sits on the cut."""
    if len(survivors) <= 2:
        return survivors
    probs = torch.softmax(row.double()[survivors], 0)
    curvature = probs.diff().diff().abs()
    total = float(curvature.sum())
    if 0 < total < 1e-5:
        return None  # below float32's resolution, or at llama.cpp's 1e-6 switch to uniform
    weights = curvature / total if total > 1e-6 else torch.full_like(curvature, 1 / curvature.shape[0])
    cdf = torch.cumsum(weights, 0)
    if not away_from(cdf, z, 1e-6):
        return None
    last = len(survivors)
    for index in range(cdf.shape[0]):
        if cdf[index] > z and index >= 1:
            last = index
            break
    return survivors[:last]


@PROPERTY
@given(rows, st.floats(0.05, 0.99), st.integers(0, 12))
def test_tail_free_fabula_is_koboldai_on_the_masked_row(row, z, k):
    masked = row.clone()
    if k:
        masked = processed(TopKLogitsWarper(top_k=k), row).reshape(-1).float()
    expected = koboldai_tail_free(masked, z)
    assume(expected is not None)
    assert kept_logits(row, warp(row, top_k=k, tail_free=z).ids.tolist()) == kept_logits(row, expected)


@PROPERTY
@given(rows, st.floats(0.05, 0.99), st.integers(0, 12))
def test_tail_free_koboldcpp_is_llama_cpp_on_the_survivors(row, z, k):
    survivors = sorted((token for token in range(row.shape[0]) if math.isfinite(row[token])),
                       key=lambda token: float(row[token]), reverse=True)
    if k:
        survivors = survivors[:k]
    expected = llama_cpp_tail_free(row, survivors, z)
    assume(expected is not None)
    cand = warp(row, top_k=k, tail_free=z, sampler_convention=KOBOLDCPP)
    assert kept_logits(row, cand.ids.tolist()) == kept_logits(row, expected)


def test_tail_free_cuts_one_token_earlier_under_koboldcpp():
    # sorted probs .4 .3 .2 .05 .03 .02: curvature 0, .05, .13, .01 → CDF 0, .263, .947, 1.
    row = torch.log(torch.tensor([0.05, 0.4, 0.02, 0.3, 0.03, 0.2]))
    assert kept_ids(warp(row, tail_free=0.9)) == {1, 3, 5}
    assert kept_ids(warp(row, tail_free=0.9, sampler_convention=KOBOLDCPP)) == {1, 3}


def test_tail_free_counts_masked_tokens_under_fabula_only():
    # top_k 4 leaves .421 .316 .211 .053 (renormalised), then the masked tokens: 0 0 on KoboldAI's
    # whole row. Their curvature (.105, .053 at the end) makes the CDF 0, .25, .75, 1: z = .8
    # keeps all four survivors.
    row = torch.log(torch.tensor([0.05, 0.4, 0.02, 0.3, 0.03, 0.2]))
    assert kept_ids(warp(row, top_k=4, tail_free=0.8)) == {1, 3, 5, 0}
    # Over the four survivors alone the curvature is 0, .053: a CDF of 0, 1, which KoboldCpp
    # passes at its second entry.
    assert kept_ids(warp(row, top_k=4, tail_free=0.8, sampler_convention=KOBOLDCPP)) == {1}


# --- temperature and the repetition penalty slope --------------------------------------------------


@PROPERTY
@given(rows, st.floats(0.05, 5.0))
def test_temperature_is_transformers(row, temperature):
    expected = torch.softmax(processed(TemperatureLogitsWarper(temperature), row).reshape(-1), -1)
    cand = warp(row, temperature=temperature)
    got = torch.zeros(row.shape[0], dtype=torch.float64)
    got[cand.ids] = cand.probs().double()
    assert torch.allclose(got, expected, atol=1e-6)


penalty_logits = st.lists(st.floats(-8, 8, width=32), min_size=6, max_size=6).map(torch.tensor)
contexts = st.lists(st.integers(0, 5), min_size=0, max_size=40)


def sign_rule(logit: float, factor: float) -> float:
    # Both peers: a positive logit is divided by the penalty, a negative one multiplied.
    return logit * factor if logit <= 0 else logit / factor


def koboldai_slope(logits, context, penalty, span, slope) -> list[float]:
    """KoboldAI's advanced repetition penalty: a ramp over `span` positions, newest last."""
    window = context[-span:] if span else context
    if slope and span > 1:
        ramp = [index / (span - 1) * 2 - 1 for index in range(span)]
        # (1 - |x|) + |x| slope is KoboldAI's 1 + |x| (slope - 1), written so that a tiny slope
        # does not round the ends' denominator to 0.
        ramp = [(slope * x) / ((1 - abs(x)) + abs(x) * slope) for x in ramp]
        factors = [1 + (x + 1) / 2 * (penalty - 1) for x in ramp][len(ramp) - len(window):]
    else:
        factors = [penalty] * len(window)
    # KoboldAI scatters every position's result; a token's newest position is written last.
    newest = {token: factors[position] for position, token in enumerate(window)}
    out = [float(x) for x in logits]
    for token, factor in newest.items():
        out[token] = sign_rule(out[token], factor)
    return out


def koboldcpp_slope(logits, context, penalty, span, slope, presence) -> list[float]:
    """KoboldCpp's: the newer half of the window penalised fully, the older half (only tokens
    absent from the newer one) with 1 + (penalty - 1) * slope when the penalty is above 1."""
    window = context[-span:] if span else context
    split = len(window) // 2
    near, far = set(window[split:]), set(window[:split])
    reduced = 1 + (penalty - 1) * slope if penalty > 1 else penalty
    out = [float(x) for x in logits]
    for token in near | far:
        out[token] = sign_rule(out[token], penalty if token in near else reduced) - presence
    return out


@PROPERTY
@given(penalty_logits, contexts, st.floats(0.5, 3.0), st.sampled_from([0, 2, 3, 8, 17, 64]),
       st.floats(0, 10, width=32))
def test_repetition_slope_fabula_is_koboldai(logits, context, penalty, span, slope):
    params = SamplingParams(repetition_penalty=penalty, repetition_penalty_range=span,
                            repetition_penalty_slope=slope)
    out = samplers.apply_penalties(logits.clone(), context, params)
    assert out.tolist() == pytest.approx(koboldai_slope(logits, context, penalty, span, slope), rel=1e-5, abs=1e-5)


@PROPERTY
@given(penalty_logits, contexts, st.floats(0.5, 3.0), st.sampled_from([0, 2, 3, 8, 17, 64]),
       st.floats(0, 10, width=32), st.sampled_from([0.0, 0.5]))
def test_repetition_slope_koboldcpp_is_koboldcpp(logits, context, penalty, span, slope, presence):
    params = SamplingParams(repetition_penalty=penalty, repetition_penalty_range=span,
                            repetition_penalty_slope=slope, presence_penalty=presence,
                            sampler_convention=KOBOLDCPP)
    out = samplers.apply_penalties(logits.clone(), context, params)
    expected = koboldcpp_slope(logits, context, penalty, span, slope, presence)
    assert out.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_koboldcpp_slope_one_is_no_slope_and_koboldai_slope_one_is_linear():
    context = list(range(6))
    flat = SamplingParams(repetition_penalty=2.0, repetition_penalty_range=6, repetition_penalty_slope=1.0,
                          sampler_convention=KOBOLDCPP)
    assert samplers.apply_penalties(torch.ones(6), context, flat).tolist() == [0.5] * 6
    linear = SamplingParams(repetition_penalty=2.0, repetition_penalty_range=6, repetition_penalty_slope=1.0)
    strengths = samplers.slope_factors(6, linear)
    assert strengths.tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


# --- the draw -----------------------------------------------------------------------------------


warper_settings = st.fixed_dictionaries({}, optional={
    "temperature": st.sampled_from([0.0, 0.3, 0.7, 1.5]),
    "top_k": st.integers(0, 8),
    "top_p": st.floats(0.1, 1.0),
    "top_a": st.floats(0.0, 1.0),
    "typical_p": st.floats(0.1, 1.0),
    "tail_free": st.floats(0.1, 1.0),
    "min_p": st.floats(0.0, 1.0),
    "sampler_convention": conventions,
})
uniforms = st.one_of(st.just(0.0), st.floats(0.0, 1.0, exclude_max=True, width=32),
                     st.just(float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))))


@PROPERTY
@given(rows, warper_settings, uniforms)
def test_no_draw_has_zero_probability(row, values, uniform):
    cand = samplers.warp(row.clone(), SamplingParams(**values))
    token = samplers.pick(cand, torch.tensor([uniform])) if len(cand) > 1 else int(cand.ids[0])
    assert math.isfinite(row[token])
    position = int(torch.nonzero(cand.ids == token)[0])
    assert float(cand.probs()[position]) > 0
