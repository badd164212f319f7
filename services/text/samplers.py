"""Logit processing for one sequence: penalties and biases, then the user-ordered warpers, then a
seeded draw.

Everything here works on one row of float32 logits and knows nothing of batching or gRPC, so each
sampler can be tested against its definition on hand-made logits.

The warpers work on a `Candidates` set (token ids with their logits, most likely first) instead of
the whole vocabulary: the first warper that truncates cuts the 49k-token row down to a few
hundred candidates, and every later warper then costs next to nothing. Tokens outside the set have
probability zero, which leaves every warper's result the same as on the masked full row except
tail-free sampling: KoboldAI runs it on the whole row, where the masked tokens are zero
probabilities at the end of the sorted curve and add to its curvature. So the set remembers how
many tokens of the row it lacks (`masked`), and tail-free sampling counts them under the FABULA
convention (`SamplerConvention` in `params.py` lists where the conventions differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from services.text.params import SAMPLING_FIELDS, SamplerConvention, SamplerName, SamplingParams, is_greedy

NEG_INF = float("-inf")


def _off(name: str, value: float) -> bool:
    """Whether a sampler's value is its neutral one (`SamplingParams` declares them): it then
    changes nothing and is skipped."""
    return SAMPLING_FIELDS[name].is_neutral(value)


@dataclass
class Candidates:
    """Token ids and logits still in the running, sorted by logit, most likely first (except
    the whole unsorted row `warp` returns when nothing truncates)."""

    ids: torch.Tensor  # int64 [n]
    logits: torch.Tensor  # float32 [n]
    row_size: int  # the full row's length: row_size - n tokens are masked (probability zero)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, first_k: int | None = None,
                    keep_ties: bool = False) -> Candidates:
        """All finite tokens, sorted; with `first_k`, only the k most likely (exactly k, or with
        `keep_ties` also every token tied with the k-th)."""
        size = logits.shape[0]
        finite = int(torch.isfinite(logits).sum())
        if first_k is not None and 0 < first_k < finite:
            values, ids = torch.topk(logits, first_k)
            if keep_ties:
                tied = int((logits >= values[-1]).sum())
                if tied > first_k:
                    values, ids = torch.topk(logits, tied)
            return cls(ids, values, size)
        values, ids = torch.sort(logits, descending=True)
        return cls(ids[:finite], values[:finite], size)

    @property
    def masked(self) -> int:
        return self.row_size - len(self)

    def keep_first(self, count: int) -> Candidates:
        count = max(1, count)  # a warper never empties the set: the most likely token stays
        return Candidates(self.ids[:count], self.logits[:count], self.row_size)

    def keep_mask(self, keep: torch.Tensor) -> Candidates:
        if not bool(keep.any()):
            keep = torch.zeros_like(keep)
            keep[0] = True
        return Candidates(self.ids[keep], self.logits[keep], self.row_size)

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# --- warpers: (candidates, value) -> candidates -------------------------------------------------


def apply_temperature(cand: Candidates, temperature: float) -> Candidates:
    if is_greedy(temperature):
        # Greedy: only the most likely token stays (the set is sorted, so it is the first).
        return cand.keep_first(1)
    return Candidates(cand.ids, cand.logits / temperature, cand.row_size)


def apply_top_k(cand: Candidates, top_k: int,
                convention: SamplerConvention = SamplerConvention.FABULA) -> Candidates:
    """The k most likely tokens. FABULA keeps every token tied with the k-th too, as
    transformers' and KoboldAI's top-k do (a cut between equal logits would be an accident of the
    sort); KOBOLDCPP keeps exactly k, as llama.cpp's does."""
    if _off("top_k", top_k) or top_k >= len(cand):
        return cand
    if convention == SamplerConvention.KOBOLDCPP:
        return cand.keep_first(top_k)
    return cand.keep_first(int((cand.logits >= cand.logits[top_k - 1]).sum()))


def apply_top_p(cand: Candidates, top_p: float) -> Candidates:
    if _off("top_p", top_p):
        return cand
    cumulative = torch.cumsum(cand.probs(), dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is
    # still short of top_p.
    mass_before = cumulative - cand.probs()
    return cand.keep_first(int((mass_before < top_p).sum()))


def apply_top_a(cand: Candidates, top_a: float) -> Candidates:
    if _off("top_a", top_a):
        return cand
    probs = cand.probs()
    threshold = top_a * float(probs[0]) ** 2
    return cand.keep_first(int((probs >= threshold).sum()))


def apply_min_p(cand: Candidates, min_p: float) -> Candidates:
    if _off("min_p", min_p):
        return cand
    probs = cand.probs()
    return cand.keep_first(int((probs >= min_p * float(probs[0])).sum()))


def apply_typical_p(cand: Candidates, typical_p: float,
                    convention: SamplerConvention = SamplerConvention.FABULA) -> Candidates:
    """Locally typical sampling (Meister et al.): keep the tokens whose surprisal is closest to
    the entropy, until they hold `typical_p` of the mass.

    FABULA is transformers' definition: stop at the token that brings the mass to typical_p and
    keep every token as close to the entropy as that one (tied logits are alike). KOBOLDCPP is
    llama.cpp's: stop at the token that takes the mass past typical_p, keep exactly that many.
    Masked tokens add nothing to the entropy or the mass, so the set gives the full row's result.
    """
    if _off("typical_p", typical_p) or len(cand) == 1:
        return cand
    log_probs = torch.log_softmax(cand.logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nansum()
    distance = (-log_probs - entropy).abs()
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(probs[order], dim=-1)
    if convention == SamplerConvention.KOBOLDCPP:
        keep_count = min(len(cand), int((cumulative <= typical_p).sum()) + 1)
        keep = torch.zeros(len(cand), dtype=torch.bool)
        keep[order[:keep_count]] = True
    else:
        keep_count = min(len(cand), int((cumulative < typical_p).sum()) + 1)
        keep = distance <= distance[order[keep_count - 1]]
    return cand.keep_mask(keep)  # boolean indexing keeps the most-likely-first order


def apply_tail_free(cand: Candidates, z: float,
                    convention: SamplerConvention = SamplerConvention.FABULA) -> Candidates:
    """Tail-free sampling (Trenton Bricken): find where the sorted probability curve flattens,
    through the normalised absolute second derivative, and cut the tail after `z` of it.

    curvature[i] = |p[i] - 2 p[i+1] + p[i+2]| and its normalised CDF decide the cut; the peers
    differ in two ways:

    - FABULA (KoboldAI): the curve is the whole row's, so masked tokens are zero probabilities
      after the set (two of them are enough: further zeros add no curvature), and the token at
      the first CDF value above z stays: 1 + #(CDF <= z) tokens, never the row's last one. A
      perfectly flat row has no curvature and keeps everything (KoboldAI divides 0 by 0 there
      and drops the row's last token: an arbitrary one of equals).
    - KOBOLDCPP (llama.cpp): the curve is the tokens still in the running only, and the cut
      comes one token earlier: the first i >= 1 whose CDF passes z keeps i tokens, all of them
      when there is none. A curvature sum below 1e-6 counts as uniform.
    """
    if _off("tail_free", z) or len(cand) <= 1:
        return cand
    probs = cand.probs()
    if convention == SamplerConvention.KOBOLDCPP:
        return _tail_free_koboldcpp(cand, probs, z)
    zeros = min(2, cand.masked)
    if len(cand) + zeros <= 2:
        return cand
    if zeros:
        probs = torch.cat([probs, torch.zeros(zeros, dtype=probs.dtype)])
    curvature = probs.diff().diff().abs()
    total = float(curvature.sum())
    if total <= 0 or not math.isfinite(total):
        return cand  # a flat distribution has no tail to cut
    cdf = torch.cumsum(curvature / total, dim=-1)
    # curvature[i] belongs to token i+1; the first token always stays.
    return cand.keep_first(min(len(cand), 1 + int((cdf <= z).sum())))


def _tail_free_koboldcpp(cand: Candidates, probs: torch.Tensor, z: float) -> Candidates:
    if len(cand) <= 2:
        return cand
    curvature = probs.diff().diff().abs()
    total = float(curvature.sum())
    if total > 1e-6:
        cdf = torch.cumsum(curvature / total, dim=-1)
    else:
        cdf = torch.arange(1, curvature.shape[0] + 1, dtype=probs.dtype) / curvature.shape[0]
    # llama.cpp keeps at least one token by ignoring a pass at index 0 (min_keep = 1).
    past = torch.nonzero(cdf[1:] > z)
    return cand if past.numel() == 0 else cand.keep_first(int(past[0]) + 1)


Warper = Callable[[Candidates, SamplingParams], Candidates]

# The registry: a sampler's name → how it runs. A sampler's name is also its value's field in
# `SamplingParams`, whose neutral value says when it is off.
WARPERS: dict[SamplerName, Warper] = {
    SamplerName.TEMPERATURE: lambda c, p: apply_temperature(c, p.temperature),
    SamplerName.TOP_K: lambda c, p: apply_top_k(c, p.top_k, p.sampler_convention),
    SamplerName.TOP_P: lambda c, p: apply_top_p(c, p.top_p),
    SamplerName.TOP_A: lambda c, p: apply_top_a(c, p.top_a),
    SamplerName.TYPICAL_P: lambda c, p: apply_typical_p(c, p.typical_p, p.sampler_convention),
    SamplerName.TAIL_FREE: lambda c, p: apply_tail_free(c, p.tail_free, p.sampler_convention),
    SamplerName.MIN_P: lambda c, p: apply_min_p(c, p.min_p),
}


def active_warpers(params: SamplingParams) -> list[SamplerName]:
    """The warpers that will change something, in the order the request asked for."""
    return [name for name, enabled in params.order if enabled and not params.is_off(name.key)]


# The first truncation can usually be found among the most likely few hundred tokens; these
# thresholds are checked on the full row's probabilities, so the shortcut is exact.
_FIRST_GUESS = 64


def _leading_truncation(logits: torch.Tensor, name: SamplerName, params: SamplingParams) -> Candidates | None:
    """The result of the first truncating warper computed with `torch.topk` on a growing k
    instead of a full sort of the vocabulary, for the warpers whose kept set is a prefix of the
    sorted row decidable from the full distribution. None for the others (typical, tail-free)."""
    size = logits.shape[0]
    if name == SamplerName.TOP_K:
        return Candidates.from_logits(logits, params.top_k,
                                      keep_ties=params.sampler_convention == SamplerConvention.FABULA)
    if name not in (SamplerName.TOP_P, SamplerName.MIN_P, SamplerName.TOP_A):
        return None
    log_probs = torch.log_softmax(logits, dim=-1)
    top = float(log_probs.max())
    k = min(_FIRST_GUESS, size)
    while True:
        values, ids = torch.topk(log_probs, k)
        probs = values.exp()
        if name == SamplerName.TOP_P:
            mass_before = torch.cumsum(probs, dim=-1) - probs
            keep = int((mass_before < params.top_p).sum())
            decided = keep < k or k == size
        else:
            threshold = (math.log(params.min_p) + top if name == SamplerName.MIN_P
                         else math.log(params.top_a) + 2 * top)
            keep = int((values >= threshold).sum())
            decided = keep < k or k == size
        if decided:
            keep = max(1, keep)
            return Candidates(ids[:keep], logits[ids[:keep]], size)
        k = min(k * 4, size)


def warp(logits: torch.Tensor, params: SamplingParams) -> Candidates:
    """Run the enabled warpers over a full row of (already penalised) logits, in order."""
    steps = active_warpers(params)
    if not steps:
        # Nothing truncates: sample from the whole row as it is, no sort needed.
        return Candidates(torch.arange(logits.shape[0]), logits, logits.shape[0])
    # Temperatures before the first truncation apply to the whole row (cheap, and the truncation
    # must see the tempered distribution).
    index = 0
    while index < len(steps) and steps[index] == SamplerName.TEMPERATURE:
        if is_greedy(params.temperature):
            best = torch.argmax(logits)
            return Candidates(best.reshape(1), logits[best].reshape(1), logits.shape[0])
        logits = logits / params.temperature
        index += 1
    if index == len(steps):
        return Candidates(torch.arange(logits.shape[0]), logits, logits.shape[0])
    cand = _leading_truncation(logits, steps[index], params)
    if cand is None:
        cand = WARPERS[steps[index]](Candidates.from_logits(logits), params)
    for name in steps[index + 1:]:
        if len(cand) == 1:
            break
        cand = WARPERS[name](cand, params)
    return cand


def draw(cand: Candidates, generator: torch.Generator) -> int:
    """One token from the candidates' distribution, using the request's own generator (inverse
    CDF: one uniform number per draw, so the stream of a seed does not depend on the set's size)."""
    if len(cand) == 1:
        return int(cand.ids[0])
    return pick(cand, torch.rand(1, generator=generator))


def pick(cand: Candidates, uniform: torch.Tensor) -> int:
    """The token at `uniform` (in [0, 1)) of the candidates' cumulative distribution.

    The first index whose CDF is above the target, not at or above it: a zero-probability token
    (banned, masked, or left in the unsorted row when nothing truncates) has the same CDF as the
    token before it, so it can never be the first above, even for a draw of exactly 0."""
    probs = cand.probs()
    cdf = torch.cumsum(probs, dim=-1)
    target = uniform * cdf[-1]
    index = int(torch.searchsorted(cdf, target, right=True))
    if index >= len(cand):
        # Rounding put the target at the very top: the last token with any probability.
        index = int(torch.nonzero(probs)[-1])
    return int(cand.ids[index])


# --- penalties and biases on the full row ------------------------------------------------------


def repetition_window(context: Sequence[int] | torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The most recent `repetition_penalty_range` tokens of the context (all when 0)."""
    tokens = torch.as_tensor(context, dtype=torch.long)
    if not params.is_off("repetition_penalty_range"):
        tokens = tokens[-params.repetition_penalty_range:]
    return tokens


def slope_factors(length: int, params: SamplingParams) -> torch.Tensor:
    """Per-position strength of the repetition penalty over the window, oldest first: a position
    with strength s penalises by 1 + s * (repetition_penalty - 1).

    FABULA is KoboldAI's (and NovelAI's) slope: a sigmoid-like ramp over the configured range, 0
    at the oldest end and 1 at the newest, linear at slope 1 and sharper as it grows; slope 0
    gives every position full strength. KOBOLDCPP is KoboldCpp's: the older half of the window
    (its first length // 2 positions) has strength `slope`, the newer half full strength, so
    slope 1 (KoboldCpp's default) is no slope at all; only a penalty above 1 is reduced.
    """
    if params.sampler_convention == SamplerConvention.KOBOLDCPP:
        strengths = torch.ones(length)
        if params.repetition_penalty > 1:
            strengths[: length // 2] = params.repetition_penalty_slope
        return strengths
    if params.is_off("repetition_penalty_slope") or params.repetition_penalty_range <= 1:
        return torch.ones(length)
    span = params.repetition_penalty_range
    ramp = torch.arange(span, dtype=torch.float64) / (span - 1) * 2 - 1
    slope = params.repetition_penalty_slope
    # KoboldAI's slope * x / (1 + |x| (slope - 1)), with the denominator written as
    # (1 - |x|) + |x| slope: the same number, but at the ends (|x| = 1) it is exactly `slope`,
    # where the usual form rounds 1 + (slope - 1) to 0 for a tiny slope and divides by it. In
    # float64 so that no slope the request can carry underflows.
    abs_ramp = ramp.abs()
    ramp = (slope * ramp) / ((1 - abs_ramp) + abs_ramp * slope)
    return ((ramp + 1) / 2).float()[-length:] if length else torch.ones(0)


def apply_penalties(logits: torch.Tensor, context: Sequence[int] | torch.Tensor,
                    params: SamplingParams) -> torch.Tensor:
    """Repetition (multiplicative, with slope), frequency and presence penalties, in place.

    Works on the distinct tokens of the window only (a few hundred), not the whole vocabulary."""
    if not params.has_penalties:
        return logits
    window = repetition_window(context, params)
    strengths = slope_factors(int(window.numel()), params)
    if params.whitelist_tensor is not None and window.numel():
        keep = ~torch.isin(window, params.whitelist_tensor)
        window, strengths = window[keep], strengths[keep]
    if window.numel() == 0:
        return logits
    tokens, inverse, counts = torch.unique(window, return_inverse=True, return_counts=True)
    values = logits[tokens]
    if not params.is_off("repetition_penalty"):
        # A token seen at several positions gets its newest position's factor: KoboldCpp's rule
        # (the newer half wins) and, as KoboldAI's ramp only grows towards the newest, the
        # strongest factor there too.
        penalty_at = 1 + strengths * (params.repetition_penalty - 1)
        positions = torch.arange(window.shape[0])
        newest = torch.zeros(tokens.shape[0], dtype=torch.long).scatter_reduce(
            0, inverse, positions, reduce="amax", include_self=False)
        factor = penalty_at[newest]
        values = torch.where(values > 0, values / factor, values * factor)
    if not (params.is_off("frequency_penalty") and params.is_off("presence_penalty")):
        values = values - params.frequency_penalty * counts.to(values.dtype) - params.presence_penalty
    logits[tokens] = values
    return logits


def apply_logit_bias(logits: torch.Tensor, bias_ids: torch.Tensor | None,
                     bias_values: torch.Tensor | None) -> torch.Tensor:
    if bias_ids is None:
        return logits
    return logits.index_add(0, bias_ids, bias_values)


def apply_phrase_bias(logits: torch.Tensor, generated: Sequence[int],
                      phrases: Sequence[tuple[tuple[int, ...], float]]) -> torch.Tensor:
    """For each phrase: bias the token that would continue the longest prefix of the phrase the
    output currently ends with (the first token when none), so a phrase is pushed (or held back)
    as a whole, not one token at a time."""
    for tokens, bias in phrases:
        matched = 0
        for length in range(min(len(tokens) - 1, len(generated)), 0, -1):
            if tuple(generated[-length:]) == tokens[:length]:
                matched = length
                break
        logits[tokens[matched]] += bias
    return logits
