"""One request's generation state inside the scheduler: its tokens, its own generator, the logit
pipeline it runs every step, and the text it has shown so far."""

from __future__ import annotations

import bisect
import random
import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from services.text import probabilities, samplers
from services.text.decoding import IncrementalDetokenizer, OutputGuard, TokenBytes
from services.text.models import LoadedModel
from services.text.params import GenerationParams, SamplerName

# A banned string may send a sequence back this many times before it gives up (ending the output
# just before the banned string, so the guarantee holds either way).
MAX_BACKTRACKS = 64


class FinishReason(Enum):
    """Why a generation ended."""

    LENGTH = "length"  # max_new_tokens reached, or the context window is full
    STOP_SEQUENCE = "stop_sequence"
    END_OF_TEXT = "end_of_text"
    CANCELLED = "cancelled"


@dataclass
class Piece:
    text: str
    token_ids: list[int]
    # With top_probabilities: one entry per token of token_ids.
    probabilities: list[probabilities.TokenProbabilities] = field(default_factory=list)


@dataclass
class Stats:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seed: int
    time_to_first_token_ms: float
    total_ms: float
    queue_ms: float
    tokens_per_second: float
    stop_sequence: str = ""
    model: str = ""
    cached_prompt_tokens: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    probabilities: list[probabilities.TokenProbabilities] = field(default_factory=list)


@dataclass
class GenerationRequest:
    """What the scheduler runs: prompt tokens and validated parameters."""

    prompt_ids: list[int]
    params: GenerationParams
    arrived: float = field(default_factory=time.perf_counter)
    # With classifier-free guidance: the negative context's tokens (fed to a second batch row).
    uncond_ids: list[int] = field(default_factory=list)


class GuidanceRow:
    """The batch row of a guided sequence's negative context: fed the same output tokens as its
    sequence, its logits are the unconditional row of classifier-free guidance. It draws
    nothing; it lives and ends with its sequence."""

    def __init__(self, owner: Sequence) -> None:
        self.owner = owner
        self.prompt_ids = list(owner.request.uncond_ids)
        self.pending_token: int | None = None
        self.fed = 0


class Sequence:
    def __init__(self, request: GenerationRequest, model: LoadedModel) -> None:
        self.request = request
        self.params = request.params
        self.model = model
        self.seed = request.params.seed if request.params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.prompt_ids = list(request.prompt_ids)
        self.detok = IncrementalDetokenizer(model.tokenizer, self.prompt_ids)
        self.guard = OutputGuard(self.params.stop_sequences, self.params.banned_strings)
        # Penalties look at prompt + output; kept in one preallocated tensor.
        capacity = len(self.prompt_ids) + self.params.max_new_tokens + 1
        self.context = torch.zeros(capacity, dtype=torch.long)
        self.context[: len(self.prompt_ids)] = torch.tensor(self.prompt_ids, dtype=torch.long)
        self.bias_ids, self.bias_values = self._logit_bias()
        self.phrases = [(tuple(model.encode(phrase)), bias) for phrase, bias in self.params.phrase_bias]
        self.phrases = [(tokens, bias) for tokens, bias in self.phrases if tokens]
        self.eos_ids = torch.tensor(sorted(model.eos_token_ids), dtype=torch.long)
        sampling = self.params.sampling
        breakers: set[int] = set()
        if not sampling.step_is_off(SamplerName.DRY):
            for breaker in sampling.dry_sequence_breakers:
                breakers.update(model.encode(breaker))
        self.sampler_state = samplers.SamplerState(generator=self.generator, breaker_ids=frozenset(breakers))
        self.leading_penalties = samplers.leading_penalties(sampling)
        # With classifier-free guidance: the batch row fed the negative context, then the same
        # output tokens as this sequence (set by the scheduler).
        self.guide: GuidanceRow | None = None
        # Tokens that may not be drawn at a given output position (after a banned string there).
        self.banned_at: dict[int, set[int]] = {}
        self.backtracks = 0
        # With top_probabilities: one entry per output token (taken back with it), and the one of
        # the token just drawn until it is accepted.
        self.token_probabilities: list[probabilities.TokenProbabilities] = []
        self._drawn_probabilities: probabilities.TokenProbabilities | None = None
        self._token_bytes = TokenBytes(model.tokenizer) if self.params.top_probabilities else None
        self.generated = 0  # tokens drawn, including ones taken back and the end-of-text token
        self.emitted_chars = 0
        self.reported_tokens = 0  # output tokens already sent with a piece
        self.pending_token: int | None = None  # drawn, not yet fed to the model
        self.fed = 0  # tokens of this sequence in the batch cache
        self.cached_prompt_tokens = 0  # prompt tokens taken from the prefix cache
        self.finish: FinishReason | None = None
        self.stop_sequence = ""
        self.final_text: str | None = None
        self.cancelled = False
        self.started: float | None = None  # prompt processing began
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    # --- the logit pipeline ----------------------------------------------------------------

    def _logit_bias(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.params.logit_bias:
            return None, None
        ids = torch.tensor([token for token, _ in self.params.logit_bias], dtype=torch.long)
        values = torch.tensor([bias for _, bias in self.params.logit_bias], dtype=torch.float32)
        return ids, values

    @property
    def output_ids(self) -> list[int]:
        return self.detok.tokens

    def next_token(self, logits: torch.Tensor, uncond: torch.Tensor | None = None) -> int:
        """Guidance, the leading penalties, biases, constraints, then the rest of the ordered
        steps and a seeded draw. `uncond` is the negative context's row when the request uses
        classifier-free guidance."""
        sampling = self.params.sampling
        length = len(self.prompt_ids) + len(self.output_ids)
        logits = logits.float()
        # The penalties work in place: keep the model's own row only when it is to be reported.
        raw = logits.clone() if self.params.top_probabilities else None
        if uncond is not None:
            logits = samplers.apply_guidance(logits, uncond, sampling.cfg_scale)
        state = self.sampler_state
        state.context = self.context[:length]
        for name in self.leading_penalties:
            logits = samplers.penalise_row(name, logits, sampling, state)
        logits = samplers.apply_logit_bias(logits, self.bias_ids, self.bias_values)
        if self.phrases:
            logits = samplers.apply_phrase_bias(logits.clone(), self.output_ids, self.phrases)
        position = len(self.output_ids)
        # In place, as the penalties are: the row is this sequence's alone (the step's copy on the
        # CPU, `raw` kept apart above).
        if position < self.params.min_new_tokens:
            logits.index_fill_(0, self.eos_ids, samplers.NEG_INF)
        banned = self.banned_at.get(position)
        if banned:
            logits.index_fill_(0, torch.tensor(sorted(banned), dtype=torch.long), samplers.NEG_INF)
        if not float(logits.max()) > samplers.NEG_INF:
            # Everything is banned here: end the text rather than draw from nothing. (The max, not
            # `isfinite(...).any()`: one pass over the vocabulary instead of four, every step.)
            return int(self.eos_ids[0])
        candidates = samplers.warp(logits, sampling, state, skip=len(self.leading_penalties))
        token = samplers.draw(candidates, self.generator)
        samplers.observe(candidates, token, sampling, state)
        if raw is not None:
            self._drawn_probabilities = probabilities.describe(
                raw, candidates, token, self.params.top_probabilities, self._token_text, self._token_bytes)
        return token

    def _token_text(self, token: int) -> str:
        return self.model.tokenizer.decode([token])

    # --- accepting a token -----------------------------------------------------------------

    def accept(self, token: int, now: float) -> int | None:
        """Take a drawn token. Returns how many already-fed tokens the model must forget when a
        banned string sent the sequence back (then `pending_token` is the token to re-feed),
        else None."""
        if self.first_token_at is None:
            self.first_token_at = now
        self.generated += 1
        if token in self.model.eos_token_ids:
            self._finish(FinishReason.END_OF_TEXT, now)
            return None
        position = len(self.output_ids)
        self.context[len(self.prompt_ids) + position] = token
        if self._drawn_probabilities is not None:
            self.token_probabilities.append(self._drawn_probabilities)
            self._drawn_probabilities = None
        before = len(self.detok.text)
        self.detok.push(token)
        match = self.guard.first_match(self.detok.text, before) if self.guard.active else None
        if match is not None and match.banned:
            return self._backtrack(match.start, now)
        if match is not None:
            self.stop_sequence = match.string
            self.final_text = self.detok.text[: match.start]
            self._finish(FinishReason.STOP_SEQUENCE, now)
            return None
        if len(self.output_ids) >= self.params.max_new_tokens or self.context_full:
            self._finish(FinishReason.LENGTH, now)
            return None
        self.pending_token = token
        return None

    @property
    def context_full(self) -> bool:
        return len(self.prompt_ids) + len(self.output_ids) >= self.model.context_window

    def _backtrack(self, banned_start: int, now: float) -> int | None:
        """Take back the tokens from the one where the banned string begins, ban that token at
        that position, and go on from there."""
        keep = self.detok.token_at_char(banned_start)
        if self.backtracks >= MAX_BACKTRACKS:
            self.final_text = self.detok.text[:banned_start]
            self._finish(FinishReason.LENGTH, now)
            return None
        self.backtracks += 1
        self.banned_at.setdefault(keep, set()).add(self.output_ids[keep])
        for later in [p for p in self.banned_at if p > keep]:
            del self.banned_at[later]
        self.detok.truncate(keep)
        del self.token_probabilities[keep:]
        # The model was fed the prompt and the output before the token just drawn. It must forget
        # down to the token before `keep`'s position (the prompt's last when keep == 0) and be fed
        # that token again, whose logits are the ones to draw position `keep` from.
        all_tokens = self.prompt_ids + self.output_ids
        to_forget = self.fed - (len(all_tokens) - 1)
        self.pending_token = all_tokens[-1]
        return max(0, to_forget)

    def _finish(self, reason: FinishReason, now: float) -> None:
        self.finish = reason
        self.finished_at = now
        self.pending_token = None

    def cancel(self, now: float) -> None:
        if self.finish is None:
            self._finish(FinishReason.CANCELLED, now)

    # --- what to show ----------------------------------------------------------------------

    def take_piece(self) -> Piece | None:
        """The text that is now safe to show, with the tokens it came from; None when nothing
        new may be shown yet."""
        text = self.detok.text if self.final_text is None else self.final_text
        tokens_upto = len(self.output_ids)
        if self.finish is None:
            limit = len(text)
            if self.guard.active:
                limit -= self.guard.holdback(text)
                if self.params.banned_strings:
                    # A backtrack cuts at a token boundary: never show part of a token it may
                    # take back.
                    limit = self.detok.safe_token_boundary(limit)
                tokens_upto = bisect.bisect_right(self.detok.char_ends, limit)
        else:
            limit = len(text)
        limit = max(limit, self.emitted_chars)
        new_text = text[self.emitted_chars: limit]
        if not new_text and (self.finish is None or tokens_upto <= self.reported_tokens):
            return None
        tokens = self.output_ids[self.reported_tokens: tokens_upto]
        probs = self.token_probabilities[self.reported_tokens: tokens_upto]
        self.emitted_chars = limit
        self.reported_tokens = max(self.reported_tokens, tokens_upto)
        return Piece(new_text, tokens, probs)

    def stats(self) -> Stats:
        end = self.finished_at or time.perf_counter()
        arrived = self.request.arrived
        started = self.started or end
        first = self.first_token_at or end
        decode_s = max(end - first, 1e-9)
        decoded_after_first = max(self.generated - 1, 0)
        text = self.detok.text if self.final_text is None else self.final_text
        return Stats(
            finish_reason=self.finish or FinishReason.CANCELLED,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.generated,
            seed=self.seed,
            time_to_first_token_ms=(first - arrived) * 1000,
            total_ms=(end - arrived) * 1000,
            queue_ms=(started - arrived) * 1000,
            tokens_per_second=decoded_after_first / decode_s if decoded_after_first else 0.0,
            stop_sequence=self.stop_sequence,
            model=self.model.name,
            cached_prompt_tokens=self.cached_prompt_tokens,
            text=text,
            token_ids=list(self.output_ids),
            probabilities=list(self.token_probabilities),
        )
