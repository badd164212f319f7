"""Hires fix: the second pass of a two-pass text to image generation.

The first pass runs at the requested size like any text to image job. When its last step is
done, the job is not decoded: its result is enlarged to the final size, either the latents
themselves (bilinear, AUTOMATIC1111's "Latent") or the decoded image through an upscaler (Lanczos
or a model, services/image/upscale.py) and encoded again, then noised to the second pass's
strength and denoised at the larger size with its own steps, as image to image does. The job
stays in the batcher throughout, so second passes share UNet calls with other jobs of their size.
The prompt's editing schedule is worked out again for the second pass's steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F

from services.image.upscale import LATENT

if TYPE_CHECKING:
    from services.image.pipeline import ImagePipeline, Job


def pending(job: Job) -> bool:
    """Whether `job` has finished its first pass and has a second one to run."""
    return job.request.hires is not None and not job.hires_pass and job.done


def second_pass_steps(pipeline: ImagePipeline, job: Job) -> int:
    """How many denoising steps (sampler calls) the second pass will take."""
    plan = job.request.hires
    if plan is None:
        return 0
    _, timesteps = pipeline.make_schedule(job.request, plan.steps, plan.strength)
    return len(timesteps)


def start_second_pass(pipeline: ImagePipeline, job: Job) -> None:
    """Turn `job`, its first pass done, into its second pass (on the batcher's thread)."""
    request, plan = job.request, job.request.hires
    factor = pipeline.model.vae_scale_factor
    if plan.upscaler == LATENT:
        start = F.interpolate(job.latents, size=(plan.height // factor, plan.width // factor), mode="bilinear",
                              antialias=False)
    else:
        frames = pipeline.decode(job)
        enlarged = [pipeline.upscalers.upscale(frame, (plan.width, plan.height), plan.upscaler) for frame in frames]
        start = pipeline.encode_images(enlarged)
    job.step_offset += job.total_steps
    job.hires_pass = True
    request.width, request.height, request.steps, request.strength = plan.width, plan.height, plan.steps, plan.strength
    job.prompts = pipeline.tokenize(request)
    job.index, job.preview_latents = 0, None
    pipeline.encode_prompt(job)
    pipeline.prepare_timesteps(job)
    job.latents = pipeline.noised(job, start, pipeline.noise(job, start.shape[1]))
    job.steps_after = 0
