"""Token probabilities for the writer's view (NovelAI's token probabilities, OpenAI's logprobs):
for each generated token, its log-probability and the most likely alternatives in the model's own
distribution ("before": the raw logits, before penalties, biases and samplers) and in the
distribution it was drawn from ("after": what the penalties, biases, constraints and warpers left,
renormalised). Only computed for requests that ask (`top_probabilities` > 0).

Each token also carries its own bytes: a byte-level token can hold part of a UTF-8 character, which
its text shows only as U+FFFD, and OpenAI's `bytes` field is there so clients can join them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from services.text.samplers import Candidates


@dataclass(frozen=True)
class Alternative:
    token_id: int
    text: str
    logprob: float
    token_bytes: bytes = b""


@dataclass(frozen=True)
class TokenProbabilities:
    token_id: int
    logprob_before: float
    logprob_after: float
    before: tuple[Alternative, ...]
    after: tuple[Alternative, ...]
    text: str = ""
    token_bytes: bytes = b""


def describe(raw_logits: torch.Tensor, drawn_from: Candidates, token: int, top: int,
             token_text: Callable[[int], str],
             token_bytes: Callable[[int], bytes] | None = None) -> TokenProbabilities:
    """`raw_logits`: the model's row; `drawn_from`: the candidates the token was drawn from (every
    other token had probability zero); `top`: how many alternatives of each to report;
    `token_bytes`: a token's own bytes (left empty without it)."""
    bytes_of = token_bytes or (lambda _: b"")
    before = torch.log_softmax(raw_logits.float(), dim=-1)
    after_logprobs = torch.log_softmax(drawn_from.logits, dim=-1)
    values, ids = torch.topk(before, min(top, before.shape[0]))
    # Candidates come sorted, most likely first, except the whole unsorted row when nothing
    # truncated: sort what is reported either way.
    count = min(top, after_logprobs.shape[0])
    after_values, order = torch.topk(after_logprobs, count)
    after_ids = drawn_from.ids[order]
    at = (drawn_from.ids == token).nonzero()
    logprob_after = float(after_logprobs[at[0, 0]]) if at.numel() else float("-inf")

    def alternatives(token_ids: torch.Tensor, logprobs: torch.Tensor) -> tuple[Alternative, ...]:
        return tuple(Alternative(t, token_text(t), float(lp), bytes_of(t))
                     for t, lp in zip(token_ids.tolist(), logprobs.tolist()))

    return TokenProbabilities(token_id=token, logprob_before=float(before[token]), logprob_after=logprob_after,
                              before=alternatives(ids, values), after=alternatives(after_ids, after_values),
                              text=token_text(token), token_bytes=bytes_of(token))
