"""Token probabilities against hand-computed distributions."""

from __future__ import annotations

import math

import pytest
import torch

from services.text import samplers
from services.text.probabilities import describe


def test_before_is_the_raw_row_and_after_the_candidates_renormalised():
    raw = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)])
    # The samplers kept tokens 1 and 0 (in that order, as a penalty might have reordered them).
    kept = samplers.Candidates(torch.tensor([1, 0]), torch.tensor([math.log(3.0), math.log(1.0)]), 4)
    probs = describe(raw, kept, token=0, top=3, token_text=lambda t: f"<{t}>")
    assert probs.token_id == 0
    assert probs.logprob_before == pytest.approx(math.log(0.5))
    assert probs.logprob_after == pytest.approx(math.log(0.25))
    assert [a.token_id for a in probs.before] == [0, 1, 2]
    assert [a.logprob for a in probs.before] == pytest.approx([math.log(0.5), math.log(0.3), math.log(0.15)])
    assert [a.token_id for a in probs.after] == [1, 0]  # only two survived
    assert [a.logprob for a in probs.after] == pytest.approx([math.log(0.75), math.log(0.25)])
    assert probs.before[2].text == "<2>"


def test_an_unsorted_whole_row_is_reported_most_likely_first():
    raw = torch.tensor([0.0, 2.0, 1.0])
    whole = samplers.Candidates(torch.tensor([0, 1, 2]), torch.tensor([0.0, 2.0, 1.0]), 3)
    probs = describe(raw, whole, token=2, top=2, token_text=str)
    total = math.exp(0) + math.exp(2) + math.exp(1)
    assert [a.token_id for a in probs.after] == [1, 2]
    assert probs.logprob_after == pytest.approx(1 - math.log(total))
    assert probs.logprob_before == pytest.approx(1 - math.log(total))
