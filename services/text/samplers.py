"""Logit processing for one sequence: penalties and biases, then the user-ordered warpers, then a
seeded draw.

Everything here works on one row of float32 logits and knows nothing of batching or gRPC, so each
sampler can be tested against its definition on hand-made logits.

The warpers work on a `Candidates` set (token ids with their logits, most likely first) instead of
the whole vocabulary: the first warper that truncates cuts the 49k-token row down to a few
hundred candidates, and every later warper then costs next to nothing. Tokens outside the set have
probability zero, so working on the set is the same distribution as masking the full row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from services.text.params import SAMPLING_FIELDS, SamplerName, SamplingParams, is_greedy

NEG_INF = float("-inf")


def _off(name: str, value: float) -> bool:
    """Whether a sampler's value is its neutral one (`SamplingParams` declares them): it then
    changes nothing and is skipped."""
    return SAMPLING_FIELDS[name].is_neutral(value)


@dataclass
class Candidates:
    """Token ids and logits still in the running, sorted by logit, most likely first."""

    ids: torch.Tensor  # int64 [n]
    logits: torch.Tensor  # float32 [n]

    @classmethod
    def from_logits(cls, logits: torch.Tensor, first_k: int | None = None) -> Candidates:
        """All finite tokens, sorted; with `first_k`, only the k most likely (exact top-k)."""
        finite = int(torch.isfinite(logits).sum())
        if first_k is not None and 0 < first_k < finite:
            values, ids = torch.topk(logits, first_k)
            return cls(ids, values)
        values, ids = torch.sort(logits, descending=True)
        return cls(ids[:finite], values[:finite])

    def keep_first(self, count: int) -> Candidates:
        count = max(1, count)  # a warper never empties the set: the most likely token stays
        return Candidates(self.ids[:count], self.logits[:count])

    def keep_mask(self, keep: torch.Tensor) -> Candidates:
        if not bool(keep.any()):
            keep = torch.zeros_like(keep)
            keep[0] = True
        return Candidates(self.ids[keep], self.logits[keep])

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# --- warpers: (candidates, value) -> candidates -------------------------------------------------


def apply_temperature(cand: Candidates, temperature: float) -> Candidates:
    if is_greedy(temperature):
        # Greedy: only the most likely token stays (the set is sorted, so it is the first).
        return cand.keep_first(1)
    return Candidates(cand.ids, cand.logits / temperature)


def apply_top_k(cand: Candidates, top_k: int) -> Candidates:
    return cand if _off("top_k", top_k) else cand.keep_first(top_k)


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


def apply_typical_p(cand: Candidates, typical_p: float) -> Candidates:
    """Locally typical sampling (Meister et al.): keep the tokens whose surprisal is closest to
    the entropy, until they hold `typical_p` of the mass."""
    if _off("typical_p", typical_p) or len(cand) == 1:
        return cand
    log_probs = torch.log_softmax(cand.logits, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nansum()
    distance = (-log_probs - entropy).abs()
    order = torch.argsort(distance, stable=True)
    cumulative = torch.cumsum(probs[order], dim=-1)
    keep_count = max(1, int((cumulative < typical_p).sum()) + 1)
    keep = torch.zeros(len(cand), dtype=torch.bool)
    keep[order[:keep_count]] = True
    return cand.keep_mask(keep)  # boolean indexing keeps the most-likely-first order


def apply_tail_free(cand: Candidates, z: float) -> Candidates:
    """Tail-free sampling (Trenton Bricken): find where the sorted probability curve flattens,
    through the normalised absolute second derivative, and cut the tail after `z` of it."""
    if _off("tail_free", z) or len(cand) <= 2:
        return cand
    probs = cand.probs()
    curvature = probs.diff().diff().abs()
    total = float(curvature.sum())
    if total <= 0 or not math.isfinite(total):
        return cand  # a flat distribution has no tail to cut
    cdf = torch.cumsum(curvature / total, dim=-1)
    # curvature[i] belongs to token i+1; the first token always stays, the last never does.
    keep_after_first = int((cdf <= z).sum())
    return cand.keep_first(1 + keep_after_first)


Warper = Callable[[Candidates, SamplingParams], Candidates]

# The registry: a sampler's name → how it runs. A sampler's name is also its value's field in
# `SamplingParams`, whose neutral value says when it is off.
WARPERS: dict[SamplerName, Warper] = {
    SamplerName.TEMPERATURE: lambda c, p: apply_temperature(c, p.temperature),
    SamplerName.TOP_K: lambda c, p: apply_top_k(c, p.top_k),
    SamplerName.TOP_P: lambda c, p: apply_top_p(c, p.top_p),
    SamplerName.TOP_A: lambda c, p: apply_top_a(c, p.top_a),
    SamplerName.TYPICAL_P: lambda c, p: apply_typical_p(c, p.typical_p),
    SamplerName.TAIL_FREE: lambda c, p: apply_tail_free(c, p.tail_free),
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
        return Candidates.from_logits(logits, params.top_k)
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
            return Candidates(ids[:keep], logits[ids[:keep]])
        k = min(k * 4, size)


def warp(logits: torch.Tensor, params: SamplingParams) -> Candidates:
    """Run the enabled warpers over a full row of (already penalised) logits, in order."""
    steps = active_warpers(params)
    if not steps:
        # Nothing truncates: sample from the whole row as it is, no sort needed.
        return Candidates(torch.arange(logits.shape[0]), logits)
    # Temperatures before the first truncation apply to the whole row (cheap, and the truncation
    # must see the tempered distribution).
    index = 0
    while index < len(steps) and steps[index] == SamplerName.TEMPERATURE:
        if is_greedy(params.temperature):
            best = torch.argmax(logits)
            return Candidates(best.reshape(1), logits[best].reshape(1))
        logits = logits / params.temperature
        index += 1
    if index == len(steps):
        return Candidates(torch.arange(logits.shape[0]), logits)
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
    cdf = torch.cumsum(cand.probs(), dim=-1)
    target = torch.rand(1, generator=generator) * cdf[-1]
    index = min(int(torch.searchsorted(cdf, target)), len(cand) - 1)
    return int(cand.ids[index])


# --- penalties and biases on the full row ------------------------------------------------------


def repetition_window(context: Sequence[int] | torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The most recent `repetition_penalty_range` tokens of the context (all when 0)."""
    tokens = torch.as_tensor(context, dtype=torch.long)
    if not params.is_off("repetition_penalty_range"):
        tokens = tokens[-params.repetition_penalty_range:]
    return tokens


def slope_factors(length: int, params: SamplingParams) -> torch.Tensor:
    """Per-position strength of the repetition penalty over the window, oldest first.

    KoboldAI's slope: a sigmoid-like ramp over the configured range, 0 at the oldest end and 1 at
    the newest, sharper as the slope grows; slope 0 gives every position full strength.
    """
    if params.is_off("repetition_penalty_slope") or params.repetition_penalty_range <= 1:
        return torch.ones(length)
    span = params.repetition_penalty_range
    ramp = torch.arange(span, dtype=torch.float32) / (span - 1) * 2 - 1
    slope = params.repetition_penalty_slope
    ramp = (slope * ramp) / (1 + ramp.abs() * (slope - 1))
    return ((ramp + 1) / 2)[-length:] if length else torch.ones(0)


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
        # A token seen at several positions gets the strongest factor among them.
        penalty_at = 1 + strengths * (params.repetition_penalty - 1)
        reduce = "amax" if params.repetition_penalty > 1 else "amin"
        factor = torch.ones(tokens.shape[0]).scatter_reduce(0, inverse, penalty_at, reduce=reduce,
                                                              include_self=False)
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
