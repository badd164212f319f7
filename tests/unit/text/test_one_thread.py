"""Sampling runs on one torch thread (`scheduler.one_thread`): the thread count comes back for the
decode step, and what sampling computes does not depend on the count outside."""

import pytest
import torch

from services.text import samplers
from services.text.params import SamplingParams
from services.text.presets_store import load_presets
from services.text.scheduler import one_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_thread_count_comes_back(two_threads):
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with one_thread():
            raise RuntimeError("a sampler failed")
    assert torch.get_num_threads() == 2


def _rows(count: int = 12) -> list[torch.Tensor]:
    # Rows the size of a real vocabulary (above torch's 32k-element grain, where it splits an
    # operator over threads), from peaked to flat.
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(49152, generator=generator) * scale for scale in torch.linspace(0.3, 6.0, count).tolist()]


def _sample(params: SamplingParams, rows: list[torch.Tensor]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    state = samplers.SamplerState(context=torch.arange(0, 3000, 7), generator=torch.Generator().manual_seed(3))
    out = []
    for row in rows:
        logits = row.clone()
        lead = samplers.leading_penalties(params)
        for name in lead:
            logits = samplers.penalise_row(name, logits, params, state)
        cand = samplers.warp(logits, params, state, skip=len(lead))
        token = samplers.draw(cand, state.generator)
        samplers.observe(cand, token, params, state)
        out.append((token, cand.ids, cand.logits))
    return out


def _same(a, b) -> bool:
    return all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("preset", sorted(load_presets()))
def test_every_preset_samples_the_same_bits_on_one_thread(preset, two_threads):
    params = load_presets()[preset].sampling
    rows = _rows()
    parallel = _sample(params, rows)
    with one_thread():
        serial = _sample(params, rows)
    assert _same(parallel, serial)


def test_unified_sampling_no_longer_depends_on_the_thread_count(two_threads):
    # Its entropy is a float sum over the whole row, which torch splits by thread: under
    # `one_thread` the same bits whatever the count outside.
    params = SamplingParams.from_mapping(dict(unified_linear=0.8, unified_quad=0.1, unified_conf=0.3), "s.",
                                         load_presets()["neutral"].sampling)
    rows = _rows()
    with one_thread():
        at_two = _sample(params, rows)
    torch.set_num_threads(1)
    with one_thread():
        at_one = _sample(params, rows)
    assert _same(at_two, at_one)
