"""The samplers a request may name, from a registry, and the noise schedules each offers.

Each sampler is a diffusers scheduler class with options, swapped in with
`Scheduler.from_config(model_scheduler_config, **options)` so that the model's own noise schedule
(betas, prediction type, spacing) is kept. DPM++ 2S ancestral has no diffusers scheduler; it is
written here (`DPMSolver2SAncestralScheduler`) after k-diffusion's `sample_dpmpp_2s_ancestral`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

NATIVE, KARRAS, EXPONENTIAL, POLYEXPONENTIAL = "native", "karras", "exponential", "polyexponential"
SCHEDULES = (NATIVE, KARRAS, EXPONENTIAL, POLYEXPONENTIAL)
# The config flag that turns each non-native schedule on.
_SCHEDULE_FLAGS = {KARRAS: "use_karras_sigmas", EXPONENTIAL: "use_exponential_sigmas"}


class DPMSolver2SAncestralScheduler(SchedulerMixin, ConfigMixin):
    """DPM-Solver++(2S) ancestral: a midpoint model evaluation per step, then ancestral noise.

    Every step but the last takes two UNet evaluations, so `timesteps` interleaves each step's
    timestep with its midpoint's ([t0, m0, t1, m1, ..., t_last]) and `order` is 2, like diffusers'
    Heun and DPM2 schedulers (a pipeline's img2img start index is `t_start * order`). The noise
    levels themselves come from EulerDiscreteScheduler, so the native, Karras and exponential
    schedules and the timestep spacing behave exactly as they do for Euler.
    """

    order = 2

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, eta: float = 1.0, s_noise: float = 1.0) -> None:
        self._levels = EulerDiscreteScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
            timestep_spacing=timestep_spacing, steps_offset=steps_offset, use_karras_sigmas=use_karras_sigmas,
            use_exponential_sigmas=use_exponential_sigmas)
        self.alphas_cumprod = self._levels.alphas_cumprod
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._plan: list[tuple[float, int, int]] = []  # (sigma of the evaluation, stage, step)
        self._steps: list[tuple[float, float, float, float]] = []  # (sigma, sigma_next, down, up)
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._saved: torch.Tensor | None = None

    @property
    def init_noise_sigma(self) -> float:
        return self._levels.init_noise_sigma

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None) -> None:
        if sigmas is not None:
            self._levels.set_timesteps(sigmas=sigmas, device="cpu")
            num_inference_steps = len(sigmas) - 1
        else:
            self._levels.set_timesteps(num_inference_steps, device="cpu")
        sigmas = self._levels.sigmas.double().tolist()
        log_sigmas = np.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).double().numpy() ** 0.5)
        eta = self.config.eta
        self._plan, self._steps, timesteps = [], [], []
        for i, timestep in enumerate(self._levels.timesteps.tolist()):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
            down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
            self._steps.append((sigma, sigma_next, down, up))
            self._plan.append((sigma, 1, i))
            timesteps.append(timestep)
            if down > 0:
                middle = math.sqrt(sigma * down)  # exp(-(t + h/2)) with t = -log(sigma)
                self._plan.append((middle, 2, i))
                timesteps.append(float(self._levels._sigma_to_t(np.array(middle), log_sigmas)))
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32, device=device)
        self.num_inference_steps = num_inference_steps
        self._step_index = None

    def _init_step_index(self) -> None:
        self._step_index = self._begin_index or 0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        if self._step_index is None:
            self._init_step_index()
        sigma = self._plan[self._step_index][0]
        return sample / ((sigma**2 + 1) ** 0.5)

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return sample - sigma * model_output
        if self.config.prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported by DPM++ 2S a")

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        if self._step_index is None:
            self._init_step_index()
        sigma_eval, stage, index = self._plan[self._step_index]
        sigma, sigma_next, down, up = self._steps[index]
        denoised = self._denoised(model_output, sample, sigma_eval)
        add_noise = False
        if stage == 1 and down == 0:
            # No midpoint (the last step): an Euler step to sigma_down.
            prev = sample + (sample - denoised) / sigma * (down - sigma)
            add_noise = sigma_next > 0
        elif stage == 1:
            h = math.log(sigma / down)
            self._saved = sample
            prev = (math.sqrt(sigma * down) / sigma) * sample - math.expm1(-h / 2) * denoised
        else:
            h = math.log(sigma / down)
            prev = (down / sigma) * self._saved - math.expm1(-h) * denoised
            self._saved = None
            add_noise = sigma_next > 0
        if add_noise:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            prev = prev + noise * self.config.s_noise * up
        self._step_index += 1
        if not return_dict:
            return (prev, denoised)
        output = SchedulerOutput(prev_sample=prev)
        output.pred_original_sample = denoised
        return output

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        index = self._step_index if self._step_index is not None else (self._begin_index or 0)
        sigma = self._plan[index][0]
        return original_samples + noise * sigma

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """k-diffusion's `get_sigmas_polyexponential` without the final zero: log sigma follows
    a ramp from 1 to 0 raised to `rho`, between log sigma_max and log sigma_min."""
    ramp = np.linspace(1, 0, steps) ** rho
    return np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))


def _set_polyexponential(scheduler: Any, steps: int, rho: float, device: torch.device | str | None) -> None:
    trained = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).double().numpy() ** 0.5
    sigmas = polyexponential_sigmas(steps, float(trained.min()), float(trained.max()), rho)
    if isinstance(scheduler, (EulerDiscreteScheduler, DPMSolver2SAncestralScheduler)):
        # Their argument is every noise level including the final zero.
        scheduler.set_timesteps(sigmas=[*sigmas.tolist(), 0.0], device=device)
        return
    # The others have no custom-sigma argument: their own schedule is set, then its noise levels
    # and timesteps are replaced (each keeps the final zero it appends).
    scheduler.set_timesteps(steps, device=device)
    timesteps = np.interp(np.log(sigmas), np.log(trained), np.arange(len(trained)))
    levels = torch.from_numpy(np.append(sigmas, 0.0)).float()
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        scheduler.sigmas = levels
        scheduler.timesteps = torch.from_numpy(timesteps.round().astype(np.int64)).to(device)
    else:
        scheduler.sigmas = levels.to(device)
        scheduler.timesteps = torch.from_numpy(timesteps).float().to(device)


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    display_name: str  # AUTOMATIC1111's name, written into PNG parameters
    scheduler: type
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    polyexponential: bool = True

    @property
    def schedules(self) -> tuple[str, ...]:
        accepted = inspect.signature(self.scheduler.__init__).parameters
        names = [NATIVE, *(name for name, flag in _SCHEDULE_FLAGS.items() if flag in accepted)]
        return (*names, POLYEXPONENTIAL) if self.polyexponential else tuple(names)

    def set_timesteps(self, scheduler: Any, steps: int, schedule: str, rho: float,
                      device: torch.device | str | None) -> None:
        if schedule == POLYEXPONENTIAL:
            _set_polyexponential(scheduler, steps, rho, device)
        else:
            scheduler.set_timesteps(steps, device=device)

    def make(self, model_config: dict[str, Any], schedule: str, seeds: list[int]) -> Any:
        """A fresh scheduler (they keep per-run state) for one request."""
        options = dict(self.options)
        for name, flag in _SCHEDULE_FLAGS.items():
            if flag in inspect.signature(self.scheduler.__init__).parameters:
                options[flag] = schedule == name
        scheduler = self.scheduler.from_config(model_config, **options)
        if isinstance(scheduler, DPMSolverSDEScheduler):
            # One Brownian tree per image, seeded like the image, so each image is reproducible
            # alone and independent of its neighbours in a batch.
            scheduler.noise_sampler_seed = list(seeds)
        return scheduler


SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    SamplerSpec("euler", "Euler", EulerDiscreteScheduler, aliases=("k_euler",)),
    SamplerSpec("euler_ancestral", "Euler a", EulerAncestralDiscreteScheduler, aliases=("k_euler_ancestral",)),
    SamplerSpec("dpmpp_2m", "DPM++ 2M", DPMSolverMultistepScheduler,
                {"algorithm_type": "dpmsolver++", "solver_order": 2}, aliases=("k_dpmpp_2m",)),
    SamplerSpec("dpmpp_2s_ancestral", "DPM++ 2S a", DPMSolver2SAncestralScheduler,
                aliases=("k_dpmpp_2s_ancestral",)),
    # Its noise levels are interleaved with midpoints it computes itself; no custom schedule.
    SamplerSpec("dpmpp_sde", "DPM++ SDE", DPMSolverSDEScheduler, aliases=("k_dpmpp_sde",), polyexponential=False),
    SamplerSpec("dpmpp_2m_sde", "DPM++ 2M SDE", DPMSolverMultistepScheduler,
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, aliases=("k_dpmpp_2m_sde",)),
    # DDIM steps through timesteps, not noise levels.
    SamplerSpec("ddim", "DDIM", DDIMScheduler, {"set_alpha_to_one": False}, aliases=("ddim_v3",),
                polyexponential=False),
)}
_BY_ALIAS = {alias: spec for spec in SAMPLERS.values() for alias in (spec.name, *spec.aliases)}


def find_sampler(name: str) -> SamplerSpec | None:
    return _BY_ALIAS.get(name.strip().lower())
