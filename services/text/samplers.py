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

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from services.text.params import (SAMPLING_FIELDS, PhraseRepetitionPenalty, SamplerConvention, SamplerName,
                                  SamplingParams, is_greedy)

NEG_INF = float("-inf")


@dataclass
class SamplerState:
    """What one sequence's samplers read or keep between steps: the context the penalties look
    at (prompt and output so far), the sequence's own generator (XTC's coin), the tokens of the
    DRY sequence breakers, and mirostat's running target `mu` (None until its first step)."""

    context: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    generator: torch.Generator | None = None
    breaker_ids: frozenset[int] = frozenset()
    mu: float | None = None
    mirostat_ran: bool = False  # set by the mirostat step, read by `observe` after the draw


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


# --- the newer warpers ------------------------------------------------------------------------


def apply_xtc(cand: Candidates, threshold: float, probability: float,
              generator: torch.Generator | None) -> Candidates:
    """XTC, "exclude top choices" (KoboldCpp's, text-generation-webui's): with chance
    `probability` (one uniform number from the sequence's generator, drawn only when the set
    holds two tokens or more), every token at least `threshold` likely is removed except the
    least likely of them, when there are two or more such tokens. Above 0.5 no two tokens can
    qualify, so it is off."""
    if _off("xtc_probability", probability) or threshold > 0.5 or len(cand) < 2:
        return cand
    roll = float(torch.rand(1, generator=generator))
    if roll >= probability:
        return cand
    above = int((cand.probs() >= threshold).sum())
    if above < 2:
        return cand
    return Candidates(cand.ids[above - 1:], cand.logits[above - 1:], cand.row_size)


def unified_logits(logits: torch.Tensor, linear: float, quad: float, conf: float) -> torch.Tensor:
    """NovelAI's unified sampling on log-probabilities l (log-softmax of the logits), with H the
    distribution's entropy in nats: l' = l * (linear + conf * H) - quad * l^2. Linear alone is an
    inverse temperature; quad pushes unlikely tokens down more than likely ones; conf makes the
    scaling depend on how unsure the model is. Tokens already at -inf stay there."""
    log_probs = torch.log_softmax(logits, dim=-1)
    finite = torch.isfinite(log_probs)
    probs = log_probs.exp()
    entropy = float(-(probs[finite] * log_probs[finite]).sum())
    scaled = log_probs * (linear + conf * entropy) - quad * log_probs.square()
    return torch.where(finite, scaled, torch.full_like(scaled, NEG_INF))


def apply_unified(cand: Candidates, params: SamplingParams) -> Candidates:
    if all(params.is_off(name) for name in SamplerName.UNIFIED.controls):
        return cand
    values = unified_logits(cand.logits, params.unified_linear, params.unified_quad, params.unified_conf)
    # A negative factor reverses the order of likelihood: keep the set sorted.
    order = torch.argsort(values, descending=True, stable=True)
    return Candidates(cand.ids[order], values[order], cand.row_size)


MIROSTAT_M = 100  # tokens mirostat v1 estimates the Zipf exponent from (llama.cpp's and KoboldCpp's m)


def apply_mirostat(cand: Candidates, params: SamplingParams, state: SamplerState | None = None) -> Candidates:
    """Mirostat (Basu et al.) as llama.cpp and KoboldCpp define it; `mu` starts at 2 * tau and
    `observe` moves it by eta * (observed surprise - tau) after each draw.

    v1: estimate the Zipf exponent s from the m = 100 most likely tokens
    (s = sum t_i b_i / sum t_i^2, t_i = ln((i+2)/(i+1)), b_i = ln(p_i / p_{i+1})), then keep the
    k = (e * 2^mu / (1 - N^-e))^(1/s) most likely tokens, e = s - 1, N the vocabulary size.
    v2: keep the tokens whose surprise -log2 p is at most mu (the most likely one always)."""
    if params.mirostat == 0 or state is None:
        return cand
    if state.mu is None:
        state.mu = 2 * params.mirostat_tau
    state.mirostat_ran = True
    if len(cand) == 1:
        return cand
    probs = cand.probs().double()
    if params.mirostat == 2:
        surprise = -torch.log2(probs)
        over = torch.nonzero(surprise > state.mu)
        return cand.keep_first(int(over[0]) if over.numel() else len(cand))
    n = min(MIROSTAT_M - 1, len(cand) - 1)
    index = torch.arange(n, dtype=torch.float64)
    t = torch.log((index + 2) / (index + 1))
    b = torch.log(probs[:n] / probs[1: n + 1])
    s_hat = float((t * b).sum() / (t * t).sum())
    epsilon = s_hat - 1
    try:
        k = math.pow(epsilon * math.pow(2, state.mu) / (1 - math.pow(cand.row_size, -epsilon)), 1 / s_hat)
    except (ValueError, ZeroDivisionError, OverflowError):
        k = float(len(cand))  # a flat or degenerate head: no cut to compute
    if not math.isfinite(k):
        k = float(len(cand))
    return cand.keep_first(min(len(cand), max(int(k), 1)))


def observe(cand: Candidates, token: int, params: SamplingParams, state: SamplerState | None) -> None:
    """After the draw: mirostat learns from the drawn token's surprise in the distribution it was
    drawn from."""
    if state is None or not state.mirostat_ran:
        return
    state.mirostat_ran = False
    probs = cand.probs()
    where = torch.nonzero(cand.ids == token)
    p = float(probs[int(where[0])]) if where.numel() else 0.0
    surprise = -math.log2(p) if p > 0 else float("inf")
    assert state.mu is not None
    state.mu = state.mu - params.mirostat_eta * (min(surprise, 1e6) - params.mirostat_tau)


# --- penalties as ordered steps ----------------------------------------------------------------


# NovelAI's levels: (shortest repeated phrase penalised, in tokens; logit subtracted). NovelAI
# describes the levels but does not publish their constants; these are Fabula's.
PHRASE_LEVELS: dict[PhraseRepetitionPenalty, tuple[int, float]] = {
    PhraseRepetitionPenalty.VERY_LIGHT: (5, 0.5),
    PhraseRepetitionPenalty.LIGHT: (4, 1.0),
    PhraseRepetitionPenalty.MEDIUM: (3, 1.5),
    PhraseRepetitionPenalty.AGGRESSIVE: (3, 2.5),
    PhraseRepetitionPenalty.VERY_AGGRESSIVE: (2, 3.5),
}
# The most recent tokens the phrase repetition penalty searches.
PHRASE_WINDOW = 8192


def repeat_lengths(context: torch.Tensor, breakers: frozenset[int] = frozenset()) -> dict[int, int]:
    """For each token that followed an earlier occurrence of the context's last token: the length
    n of the longest repeat it would extend (the context's last n tokens occurred earlier, followed
    by that token). A sequence breaker ends a repeat: none counts across one, and a context ending
    in one, or a token that is one, has no repeat (DRY's rule, text-generation-webui's code)."""
    length_total = int(context.shape[0])
    if length_total < 2:
        return {}
    tokens = context.tolist()
    last = tokens[-1]
    if last in breakers:
        return {}
    lengths: dict[int, int] = {}
    for i in torch.nonzero(context[:-1] == last).flatten().tolist():
        following = tokens[i + 1]
        if following in breakers:
            continue
        length = 1
        while True:
            j = i - length
            if j < 0:
                break
            previous = tokens[length_total - 1 - length]
            if tokens[j] != previous or previous in breakers:
                break
            length += 1
        if lengths.get(following, 0) < length:
            lengths[following] = length
    return lengths


def apply_dry(logits: torch.Tensor, context: torch.Tensor, params: SamplingParams,
              breakers: frozenset[int]) -> torch.Tensor:
    """DRY (KoboldCpp's, text-generation-webui's): a token that would extend a repeat of n >=
    allowed_length tokens loses multiplier * base^(n - allowed_length) from its logit. Looks at
    the last dry_penalty_last_n tokens of the context (all when 0). In place."""
    if _off("dry_multiplier", params.dry_multiplier):
        return logits
    if params.dry_penalty_last_n:
        context = context[-params.dry_penalty_last_n:]
    log_base, log_multiplier = math.log(params.dry_base), math.log(params.dry_multiplier)
    for token, length in repeat_lengths(context, breakers).items():
        if length >= params.dry_allowed_length:
            # In log space, capped: a very long repeat must not overflow float32 into -inf + inf.
            exponent = log_multiplier + (length - params.dry_allowed_length) * log_base
            logits[token] -= math.exp(min(exponent, 80.0))
    return logits


def apply_phrase_repetition_penalty(logits: torch.Tensor, context: torch.Tensor,
                                    level: PhraseRepetitionPenalty) -> torch.Tensor:
    """NovelAI's phrase repetition penalty: the token that would extend a phrase of at least the
    level's length already in the context (its last PHRASE_WINDOW tokens) loses the level's
    penalty, scaled by how much longer than that the repeat is (n / shortest, at most 2): whole
    repeated phrases are held back, single repeated tokens are not. In place."""
    if level == PhraseRepetitionPenalty.OFF:
        return logits
    shortest, penalty = PHRASE_LEVELS[level]
    for token, length in repeat_lengths(context[-PHRASE_WINDOW:]).items():
        if length >= shortest:
            logits[token] -= penalty * min(length / shortest, 2.0)
    return logits


def penalise_row(name: SamplerName, logits: torch.Tensor, params: SamplingParams,
                 state: SamplerState | None) -> torch.Tensor:
    """One penalty step on a full row (in place where it can be)."""
    if state is None:
        return logits
    if name == SamplerName.REPETITION_PENALTY:
        return apply_penalties(logits, state.context, params)
    if name == SamplerName.DRY:
        return apply_dry(logits, state.context, params, state.breaker_ids)
    return apply_phrase_repetition_penalty(logits, state.context, params.phrase_repetition_penalty)


def _penalise_candidates(name: SamplerName, cand: Candidates, params: SamplingParams,
                         state: SamplerState | None) -> Candidates:
    """A penalty placed after a truncation: it changes the logits of the tokens still in the set
    (through a row where the rest are -inf), and the set is sorted again."""
    if state is None or params.step_is_off(name):
        return cand
    row = torch.full((cand.row_size,), NEG_INF)
    row[cand.ids] = cand.logits
    values = penalise_row(name, row, params, state)[cand.ids]
    order = torch.argsort(values, descending=True, stable=True)
    return Candidates(cand.ids[order], values[order], cand.row_size)


Warper = Callable[[Candidates, SamplingParams, "SamplerState | None"], Candidates]

# The registry: a step's name → how it runs on a candidate set. `SamplerName.controls` names the
# `SamplingParams` fields whose neutral values say when it is off.
WARPERS: dict[SamplerName, Warper] = {
    SamplerName.TEMPERATURE: lambda c, p, s=None: apply_temperature(c, p.temperature),
    SamplerName.TOP_K: lambda c, p, s=None: apply_top_k(c, p.top_k, p.sampler_convention),
    SamplerName.TOP_P: lambda c, p, s=None: apply_top_p(c, p.top_p),
    SamplerName.TOP_A: lambda c, p, s=None: apply_top_a(c, p.top_a),
    SamplerName.TYPICAL_P: lambda c, p, s=None: apply_typical_p(c, p.typical_p, p.sampler_convention),
    SamplerName.TAIL_FREE: lambda c, p, s=None: apply_tail_free(c, p.tail_free, p.sampler_convention),
    SamplerName.MIN_P: lambda c, p, s=None: apply_min_p(c, p.min_p),
    SamplerName.XTC: lambda c, p, s=None: apply_xtc(c, p.xtc_threshold, p.xtc_probability,
                                                     s.generator if s is not None else None),
    SamplerName.UNIFIED: lambda c, p, s=None: apply_unified(c, p),
    SamplerName.MIROSTAT: apply_mirostat,
    SamplerName.REPETITION_PENALTY: lambda c, p, s=None: _penalise_candidates(SamplerName.REPETITION_PENALTY, c, p, s),
    SamplerName.PHRASE_REPETITION_PENALTY: lambda c, p, s=None: _penalise_candidates(
        SamplerName.PHRASE_REPETITION_PENALTY, c, p, s),
    SamplerName.DRY: lambda c, p, s=None: _penalise_candidates(SamplerName.DRY, c, p, s),
}


def active_warpers(params: SamplingParams) -> list[SamplerName]:
    """The steps that will change something, in the order the request asked for."""
    return list(params.active_steps)


def leading_penalties(params: SamplingParams) -> list[SamplerName]:
    """The active penalty steps before the first active warper: they run on the model's row
    before the logit biases and bans, where the penalties always ran."""
    lead = []
    for name in active_warpers(params):
        if not name.is_penalty:
            break
        lead.append(name)
    return lead


def apply_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (NovelAI's CFG, transformers' ClassifierFreeGuidance): on
    log-probabilities, uncond + scale * (cond - uncond). The negative context's row `uncond`
    comes from a second row of the same batched forward pass."""
    cond_lp = torch.log_softmax(cond.float(), dim=-1)
    uncond_lp = torch.log_softmax(uncond.float(), dim=-1)
    return uncond_lp + scale * (cond_lp - uncond_lp)


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
    threshold = 0.0
    if name != SamplerName.TOP_P:  # top-p needs no threshold (and a pass over the row less)
        top = float(log_probs.max())
        threshold = (math.log(params.min_p) + top if name == SamplerName.MIN_P
                     else math.log(params.top_a) + 2 * top)
    k = min(_FIRST_GUESS, size)
    while True:
        values, ids = torch.topk(log_probs, k)
        probs = values.exp()
        if name == SamplerName.TOP_P:
            mass_before = torch.cumsum(probs, dim=-1) - probs
            keep = int((mass_before < params.top_p).sum())
            decided = keep < k or k == size
        else:
            keep = int((values >= threshold).sum())
            decided = keep < k or k == size
        if decided:
            keep = max(1, keep)
            return Candidates(ids[:keep], logits[ids[:keep]], size)
        k = min(k * 4, size)


def warp(logits: torch.Tensor, params: SamplingParams, state: SamplerState | None = None,
         skip: int = 0) -> Candidates:
    """Run the enabled steps over a full row of logits, in order, after the first `skip` of them
    (the leading penalties, which the caller ran). Steps before the first truncation work on the
    whole row (temperature, unified, penalties: no sort needed); the first truncation makes the
    candidate set the rest work on."""
    steps = params.active_steps[skip:]
    size = logits.shape[0]
    cand: Candidates | None = None  # None: still the whole row `logits`
    for name in steps:
        if cand is None:
            if name == SamplerName.TEMPERATURE:
                if is_greedy(params.temperature):
                    best = torch.argmax(logits)
                    cand = Candidates(best.reshape(1), logits[best].reshape(1), size)
                else:
                    logits = logits / params.temperature
                continue
            if name.is_penalty:
                logits = penalise_row(name, logits, params, state)
                continue
            if name == SamplerName.UNIFIED:
                logits = unified_logits(logits, params.unified_linear, params.unified_quad, params.unified_conf)
                continue
            cand = _leading_truncation(logits, name, params)
            if cand is None:
                cand = WARPERS[name](Candidates.from_logits(logits), params, state)
            continue
        if len(cand) == 1 and name != SamplerName.MIROSTAT:
            continue  # nothing left to change (mirostat still learns from the step)
        cand = WARPERS[name](cand, params, state)
    if cand is None:
        # Nothing truncates: sample from the whole row as it is, no sort needed.
        return Candidates(_row_ids(size), logits, size)
    return cand


@functools.lru_cache(maxsize=8)
def _row_ids(size: int) -> torch.Tensor:
    """0..size-1, made once per vocabulary size (every step of every untruncated row needs it;
    nothing writes to a candidate set's ids). A normal tensor even when first asked for under
    `torch.inference_mode()` (the scheduler's), so callers outside it may slice it too."""
    with torch.inference_mode(False):
        return torch.arange(size)


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


def slope_is_flat(params: SamplingParams) -> bool:
    """Whether every position of the window has full strength (`slope_factors` all ones): then
    each penalised token gets the same factor, and `apply_penalties` needs no per-position work."""
    if params.sampler_convention == SamplerConvention.KOBOLDCPP:
        return params.repetition_penalty <= 1 or params.repetition_penalty_slope == 1
    return params.is_off("repetition_penalty_slope") or params.repetition_penalty_range <= 1


def slope_factors(length: int, params: SamplingParams) -> torch.Tensor:
    """Per-position strength of the repetition penalty over the window, oldest first: a position
    with strength s penalises by 1 + s * (repetition_penalty - 1).

    FABULA is KoboldAI's (and NovelAI's) slope: a sigmoid-like ramp over the configured range, 0
    at the oldest end and 1 at the newest, linear at slope 1 and sharper as it grows; slope 0
    gives every position full strength. KOBOLDCPP is KoboldCpp's: the older half of the window
    (its first length // 2 positions) has strength `slope`, the newer half full strength, so
    slope 1 (KoboldCpp's default) is no slope at all; only a penalty above 1 is reduced.
    """
    if slope_is_flat(params):
        return torch.ones(length)
    if params.sampler_convention == SamplerConvention.KOBOLDCPP:
        strengths = torch.ones(length)
        strengths[: length // 2] = params.repetition_penalty_slope
        return strengths
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
    # With a flat slope every position has the same strength: one factor for every token, and no
    # per-position bookkeeping (the common case, run every step for every row). The factor is
    # computed by the same float32 operations as the ramp's, so both paths give the same bits.
    flat = slope_is_flat(params)
    strengths = torch.ones(1) if flat else slope_factors(int(window.numel()), params)
    if params.whitelist_tensor is not None and window.numel():
        keep = ~torch.isin(window, params.whitelist_tensor)
        window = window[keep]
        if not flat:
            strengths = strengths[keep]
    if window.numel() == 0:
        return logits
    repetition = not params.is_off("repetition_penalty")
    counted = not (params.is_off("frequency_penalty") and params.is_off("presence_penalty"))
    inverse = counts = None
    if repetition and not flat:
        tokens, inverse, counts = torch.unique(window, return_inverse=True, return_counts=True)
    elif counted:
        tokens, counts = torch.unique(window, return_counts=True)
    else:
        tokens = torch.unique(window)
    values = logits[tokens]
    if repetition:
        penalty_at = 1 + strengths * (params.repetition_penalty - 1)
        if flat:
            factor = penalty_at
        else:
            # A token seen at several positions gets its newest position's factor: KoboldCpp's
            # rule (the newer half wins) and, as KoboldAI's ramp only grows towards the newest,
            # the strongest factor there too.
            positions = torch.arange(window.shape[0])
            newest = torch.zeros(tokens.shape[0], dtype=torch.long).scatter_reduce(
                0, inverse, positions, reduce="amax", include_self=False)
            factor = penalty_at[newest]
        values = torch.where(values > 0, values / factor, values * factor)
    if counted:
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
