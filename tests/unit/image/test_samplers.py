"""The sampler registry and the DPM++ 2S ancestral scheduler written here."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from services.image.samplers import SAMPLERS, DPMSolver2SAncestralScheduler, find_sampler

CONFIG = dict(EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     steps_offset=1).config)


def test_names_and_aliases() -> None:
    assert set(SAMPLERS) >= {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde", "ddim"}
    assert find_sampler("k_euler_ancestral") is SAMPLERS["euler_ancestral"]
    assert find_sampler("K_DPMPP_2M") is SAMPLERS["dpmpp_2m"]
    assert find_sampler("lms") is None


def test_schedules_follow_what_each_scheduler_offers() -> None:
    assert SAMPLERS["euler"].schedules == ("native", "karras", "exponential", "polyexponential")
    assert SAMPLERS["euler_ancestral"].schedules == ("native", "polyexponential")
    assert SAMPLERS["ddim"].schedules == ("native",)
    karras = SAMPLERS["dpmpp_2m"].make(CONFIG, "karras", [1])
    assert karras.config.use_karras_sigmas and not karras.config.use_exponential_sigmas


def _oracle(x0: torch.Tensor):
    """An epsilon model that knows the clean sample: eps = (x - x0) / sigma in sigma space."""
    def predict(scheduler, scaled: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        sigma = scheduler._plan[scheduler.step_index][0]
        return (sample - x0) / sigma
    return predict


@pytest.mark.parametrize("schedule", ["native", "karras", "exponential"])
def test_dpmpp_2s_ancestral_without_noise_reaches_the_clean_sample(schedule) -> None:
    scheduler = DPMSolver2SAncestralScheduler.from_config(CONFIG, eta=0.0, **{
        "use_karras_sigmas": schedule == "karras", "use_exponential_sigmas": schedule == "exponential"})
    scheduler.set_timesteps(8)
    # Two evaluations per step but the last one.
    assert len(scheduler.timesteps) == 2 * 8 - 1
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8)
    sample = torch.randn(1, 4, 8, 8) * scheduler.init_noise_sigma + x0
    predict = _oracle(x0)
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(sample, t)
        sample = scheduler.step(predict(scheduler, scaled, sample), t, sample).prev_sample
    assert torch.allclose(sample, x0, atol=1e-4)


def test_dpmpp_2s_ancestral_noise_comes_from_each_images_generator() -> None:
    def run(seeds):
        scheduler = SAMPLERS["dpmpp_2s_ancestral"].make(CONFIG, "native", seeds)
        scheduler.set_timesteps(4)
        sample = torch.ones(len(seeds), 4, 4, 4)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        for t in scheduler.timesteps:
            scheduler.scale_model_input(sample, t)
            sample = scheduler.step(torch.zeros_like(sample), t, sample, generator=generators).prev_sample
        return sample
    pair, alone = run([5, 6]), run([6])
    assert torch.allclose(pair[1], alone[0])
    assert not torch.allclose(pair[0], pair[1])


def test_dpmpp_sde_gets_one_brownian_tree_per_image() -> None:
    scheduler = SAMPLERS["dpmpp_sde"].make(CONFIG, "native", [3, 4])
    assert scheduler.noise_sampler_seed == [3, 4]


def test_polyexponential_noise_levels_follow_k_diffusion() -> None:
    import math

    import numpy as np

    from services.image.samplers import SAMPLERS, polyexponential_sigmas

    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    # rho 1: evenly spaced in log sigma between the model's extreme noise levels.
    levels = polyexponential_sigmas(5, 0.03, 14.6, 1.0)
    assert np.allclose(np.diff(np.log(levels)), math.log(0.03 / 14.6) / 4)
    steep = polyexponential_sigmas(5, 0.03, 14.6, 3.0)
    assert steep[0] == levels[0] and math.isclose(steep[-1], levels[-1]) and (steep[1:-1] < levels[1:-1]).all()
    for name in ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral"):
        spec = SAMPLERS[name]
        assert "polyexponential" in spec.schedules
        scheduler = spec.make(config, "polyexponential", [1])
        spec.set_timesteps(scheduler, 6, "polyexponential", 2.0, "cpu")
        if hasattr(scheduler, "sigmas"):
            trained = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
            expected = polyexponential_sigmas(6, float(trained.min()), float(trained.max()), 2.0)
            assert np.allclose(scheduler.sigmas[:-1].numpy(), expected, rtol=1e-4) and scheduler.sigmas[-1] == 0
    assert "polyexponential" not in SAMPLERS["ddim"].schedules
