"""Dynamic thresholding (Saharia et al. 2022, "Imagen", section 2.3) on each step's prediction.

At every step the clean latents the model predicts, x0 = (x - sigma * eps) / alpha, are clamped
at the `percentile` of their absolute values (per image), but never below `max_value`, and
scaled back into [-max_value, max_value]: s = max(quantile(|x0|, p), M); x0 <- clamp(x0, -s, s) * M / s.
Imagen states it for pixels in [-1, 1] (M = 1); latents have a wider range, so M is a parameter
(4 by default, about the range of SD latents): well-behaved predictions are left alone, and the
over-saturated ones high guidance scales produce are pulled back. The guided noise prediction is
then recomputed from the clamped x0, so every sampler continues from it unchanged.

Works on the noise levels of every sampler here: the sigma-parameterised ones (Euler, Euler a,
DPM++ 2S a, DPM++ SDE; x = x0 + sigma eps) and the variance-preserving ones (DDIM, DPM++ 2M;
x = alpha x0 + sigma eps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from services.image.samplers import DPMSolver2SAncestralScheduler


def _alpha_sigma(scheduler: Any, timestep: torch.Tensor) -> tuple[float, float]:
    if isinstance(scheduler, DDIMScheduler):
        cumulative = float(scheduler.alphas_cumprod[int(timestep)])
        return math.sqrt(cumulative), math.sqrt(1 - cumulative)
    if isinstance(scheduler, DPMSolver2SAncestralScheduler):
        return 1.0, float(scheduler._plan[scheduler.step_index or 0][0])
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)
    sigma = float(scheduler.sigmas[scheduler.step_index])
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        alpha = 1 / math.sqrt(sigma**2 + 1)
        return alpha, sigma * alpha
    return 1.0, sigma


def threshold(scheduler: Any, timestep: torch.Tensor, latents: torch.Tensor, noise_pred: torch.Tensor,
              percentile: float, max_value: float) -> torch.Tensor:
    """The noise prediction whose implied clean latents are dynamically thresholded."""
    alpha, sigma = _alpha_sigma(scheduler, timestep)
    if sigma <= 0:
        return noise_pred
    x0 = (latents.float() - sigma * noise_pred.float()) / alpha
    flat = x0.abs().reshape(x0.shape[0], -1)
    s = torch.quantile(flat, percentile, dim=1).clamp(min=max_value).reshape(-1, *([1] * (x0.dim() - 1)))
    clamped = torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)
    return ((latents.float() - alpha * clamped) / sigma).to(noise_pred.dtype)
