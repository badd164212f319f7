"""Token probabilities for the writer's view (NovelAI's token probabilities, OpenAI's logprobs):
for each generated token, its log-probability and the most likely alternatives in the model's own
distribution ("before": the raw logits, before penalties, biases and samplers) and in the
distribution it was drawn from ("after": what the penalties, biases, constraints and warpers left,
renormalised). Only computed for requests that ask (`top_probabilities` > 0)."""

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


@dataclass(frozen=True)
class TokenProbabilities:
    token_id: int
    logprob_before: float
    logprob_after: float
    before: tuple[Alternative, ...]
    after: tuple[Alternative, ...]


def describe(raw_logits: torch.Tensor, drawn_from: Candidates, token: int, top: int,
             token_text: Callable[[int], str]) -> TokenProbabilities:
    """`raw_logits`: the model's row; `drawn_from`: the candidates the token was drawn from (every
    other token had probability zero); `top`: how many alternatives of each to report."""
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
        return tuple(Alternative(int(t), token_text(int(t)), float(lp))
                     for t, lp in zip(token_ids.tolist(), logprobs.tolist()))

    return TokenProbabilities(token_id=token, logprob_before=float(before[token]), logprob_after=logprob_after,
                              before=alternatives(ids, values), after=alternatives(after_ids, after_values))
