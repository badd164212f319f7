"""The generation pipeline: a request becomes a `Job`, jobs are denoised (together), then decoded.

`ImagePipeline.__call__` reads as diffusers' pipelines do, in numbered steps:
1. check_inputs (params.check_inputs, plus the back end's shape limits) →
2. encode_prompt → 3. prepare_timesteps → 4. prepare_latents → 5. the denoising loop →
6. decode and postprocess (paste inpainted regions back, embed the parameters in the PNG).

The batcher (batcher.py) runs the same steps, but step 5 one step at a time over every job that
shares a shape: `denoise(jobs)` makes one UNet call for all of them, then each job applies its
own guidance and its own scheduler. For a single job the arithmetic is exactly diffusers'
StableDiffusionPipeline's, so the same seed gives the same pixels.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from services.image import guidance as guided
from services.image import hires, metadata, thresholding
from services.image import images as pixels
from services.image.backends.base import Backend
from services.image.conditioning import Conditioning, PromptTokenizer, StagedPrompt, encode, stage_prompt
from services.image.events import Event, GeneratedImage, Progress, PromptReport
from services.image.models import BUILTIN_PREFIX, LoadedModel
from services.image.params import FROM_IMAGE, Action, MaskedContent, Request
from services.image.schedule import stage_at
from services.image.signing import CHUNK as SIGNATURE_CHUNK
from services.image.signing import ImageSigner
from services.image.upscale import Upscalers
from services.toolkit.errors import FailedPrecondition, InvalidArgument

# Written into every image's parameters, so an image says which release made it.
VERSION = f"fabula {importlib.metadata.version('fabula')}"


@dataclass
class Prompts:
    """A request's prompt and negative prompt, each stage tokenized once per tokenizer of the model."""

    positive: StagedPrompt
    negative: StagedPrompt
    # Character prompts (regions.py): (prompt, its undesired content) each.
    characters: list[tuple[StagedPrompt, StagedPrompt]] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return max(self.positive.chunks, self.negative.chunks,
                   *(prompt.chunks for pair in self.characters for prompt in pair))


@dataclass
class StepConditioning:
    """What the UNet is conditioned on while the job's step counter is at most `until_step`:
    the encoded prompts (negative first when guided), shared between stages with the same text."""

    until_step: int
    rows: list[Conditioning]


@dataclass
class Region:
    """The part of the input image that is generated (all of it, or the masked area plus padding)."""

    box: tuple[int, int, int, int]
    original: Image.Image  # the region of the input, at generation size
    image: Image.Image  # what the masked area starts from (the original, or filled for FILL)
    mask: Image.Image  # hard mask at generation size
    composite: Image.Image  # blurred mask at the input's size, for pasting back


@dataclass
class Job:
    """One request's state through the denoising loop (all of its images advance together)."""

    request: Request
    prompts: Prompts
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    last_stepped: float = 0.0
    # Set by ImagePipeline.prepare:
    generators: list[torch.Generator] = field(default_factory=list)
    conditionings: list[StepConditioning] = field(default_factory=list)  # one per prompt-editing stage
    stage: int = -1  # which of them embeds and added were built from
    embeds: torch.Tensor | None = None  # the current step's (all stages have the same shape)
    added: dict[str, torch.Tensor] | None = None
    scheduler: Any = None
    timesteps: torch.Tensor | None = None
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    index: int = 0
    do_cfg: bool = False
    region: Region | None = None
    image_latents: torch.Tensor | None = None  # the input's latents (inpainting keeps them outside the mask)
    noise: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None  # 1 = redraw
    unet_extra: torch.Tensor | None = None  # inpainting UNets: mask and masked-image latents
    preview_latents: torch.Tensor | None = None
    guidance: guided.JobGuidance | None = None  # references, controls, character regions
    # Hires fix: whether the second pass runs, the first pass's steps before it, and the second
    # pass's steps still to come during the first (so progress counts both).
    hires_pass: bool = False
    step_offset: int = 0
    steps_after: int = 0
    upscaled: Image.Image | None = None  # the upscale action's result

    @property
    def n_images(self) -> int:
        return self.request.n_images

    @property
    def rows(self) -> int:
        return self.n_images * (2 if self.do_cfg else 1)

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.index >= self.total_steps

    @property
    def key(self) -> tuple:
        """Jobs with the same key can share a UNet call."""
        return (self.latents.shape[2], self.latents.shape[3], self.embeds.shape[1], self.added is not None)

    def cancel(self) -> None:
        self.cancelled.set()


class ImagePipeline:
    def __init__(self, model: LoadedModel, backend: Backend, max_chunks: int,
                 guidance: guided.GuidanceModels | None = None) -> None:
        self.model = model
        # The model's IP-Adapter and ControlNets; None serves no references, controls or characters.
        self.guidance = guidance
        self.backend = backend
        self.device = backend.device
        self.tokenizers = [PromptTokenizer(t, max_chunks) for t in model.tokenizers]
        self.image_processor = VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)
        self.scaling_factor = model.vae.config.scaling_factor
        # Set by the generator: the process's upscalers, and the key its PNGs are signed with.
        self.upscalers = Upscalers()
        self.signer: ImageSigner | None = None

    # --- the whole pipeline for one request (tests, benchmarks, warm-up) ---

    def __call__(self, request: Request, emit: Callable[[Event], None] | None = None) -> list[GeneratedImage]:
        events: list[Event] = []
        job = Job(request, self.tokenize(request), emit or events.append)
        # 1. check_inputs (the request itself was checked by params.check_inputs)
        self.check_shape(job)
        # 2.-4. encode the prompts, set the timesteps, prepare the latents
        self.prepare(job)
        # 5. denoising loop (and the hires fix's second pass)
        while not job.done:
            self.denoise([job])
            if hires.pending(job):
                hires.start_second_pass(self, job)
        # 6. decode and postprocess
        return self.finish(job)

    def tokenize(self, request: Request) -> Prompts:
        def staged(text: str) -> StagedPrompt:
            return stage_prompt(self.tokenizers, text, request.dialect, request.steps)

        return Prompts(staged(request.prompt), staged(request.negative_prompt),
                       [(staged(c.prompt), staged(c.negative_prompt)) for c in request.guidance.characters])

    def reports(self, job: Job) -> tuple[PromptReport, PromptReport]:
        # The first tokenizer's view (SDXL's two CLIP tokenizers split text the same way).
        tokenizer, request = self.tokenizers[0], job.request
        return (PromptReport.build(tokenizer, job.prompts.positive, request.prompt, request.dialect),
                PromptReport.build(tokenizer, job.prompts.negative, request.negative_prompt, request.dialect))

    def check_shape(self, job: Job) -> None:
        request = job.request
        if request.guidance and (self.guidance is None or not self.backend.supports_extras):
            raise FailedPrecondition(f"model {self.model.name} runs on the {self.backend.name} back end, which runs "
                                     "no references, controls or characters; serve it with backend eager or compiled "
                                     "for them")
        if request.action == Action.UPSCALE:
            return
        reason = self.backend.check_shape(request.n_images, request.height, request.width, job.prompts.chunks)
        if reason is not None:
            raise InvalidArgument("params.width", f"{request.width}x{request.height}x{request.n_images}", reason)
        plan = request.hires
        if plan is not None and not job.hires_pass:
            reason = self.backend.check_shape(request.n_images, plan.height, plan.width, job.prompts.chunks)
            if reason is not None:
                raise InvalidArgument("params.hires.width", f"{plan.width}x{plan.height}x{request.n_images}", reason)

    def prepare(self, job: Job) -> None:
        job.started = time.perf_counter()
        if job.request.action == Action.UPSCALE:
            # No denoising: the job is done once the image is enlarged.
            request = job.request
            job.upscaled = self.upscalers.upscale(request.image, (request.width, request.height), request.upscaler)
            job.timesteps = torch.zeros(0)
            return
        job.generators = [torch.Generator("cpu").manual_seed(seed) for seed in job.request.seeds]
        self.encode_prompt(job)
        self.prepare_timesteps(job)
        self.prepare_latents(job)
        guided.prepare(self, job)
        job.steps_after = hires.second_pass_steps(self, job)

    # --- 2. encode_prompt ---

    def encode_prompt(self, job: Job) -> None:
        """Encode every prompt-editing stage; the denoising loop picks one per step."""
        request, prompts = job.request, job.prompts
        chunks = prompts.chunks
        encoders = [lambda ids, i=i: self.backend.encode_text(i, ids) for i in range(len(self.tokenizers))]
        job.do_cfg = request.guidance_scale > 1 and self.model.unet.config.time_cond_proj_dim is None
        # Each row's text context: its prompt, then (several characters) each character's prompt
        # of the same side, whose tokens attend only inside the character's region.
        negative = [prompts.negative] + [pair[1] for pair in prompts.characters]
        positive = [prompts.positive] + [pair[0] for pair in prompts.characters]
        staged = [negative, positive] if job.do_cfg else [positive]
        # Alternations repeat texts: each distinct text is encoded once.
        encoded: dict[str, Conditioning] = {}
        # The stages of all prompts interleave: a new conditioning wherever any changes.
        ends = sorted({stage.until_step for side in staged for prompt in side for stage in prompt.stages})
        job.conditionings, job.stage = [], -1
        for end in ends:
            rows = []
            for side in staged:
                parts = []
                for prompt in side:
                    index = stage_at([stage.until_step for stage in prompt.stages], end)
                    text = prompt.stages[index].text
                    if text not in encoded:
                        encoded[text] = encode(self.tokenizers, encoders, prompt.tokenized[index], chunks)
                    parts.append(encoded[text])
                rows.append(parts[0] if len(parts) == 1 else
                            Conditioning(torch.cat([part.hidden for part in parts], dim=1), parts[0].pooled))
            job.conditionings.append(StepConditioning(end, rows))
        self._condition(job)

    def _condition(self, job: Job) -> None:
        """Point the job at the conditioning of its current sampler step (counted from 0)."""
        step = job.index // job.scheduler.order if job.scheduler is not None else 0
        stage = stage_at([c.until_step for c in job.conditionings], step)
        if stage == job.stage:
            return
        rows, n = job.conditionings[stage].rows, job.n_images
        # Negative rows first, then positive, each repeated per image, as diffusers orders them.
        job.embeds = torch.cat([c.hidden.repeat(n, 1, 1) for c in rows]).to(self.device)
        job.added = self._sdxl_added(job.request, rows, n) if self.model.family == "sdxl" else None
        job.stage = stage

    def _sdxl_added(self, request: Request, rows: list[Conditioning], n: int) -> dict[str, torch.Tensor]:
        # Micro-conditioning: original size, crop origin, target size (no crop).
        size = [request.height, request.width]
        time_ids = torch.tensor([size + [0, 0] + size], dtype=self.backend.dtype, device=self.device)
        pooled = torch.cat([c.pooled.repeat(n, 1) for c in rows]).to(self.device, self.backend.dtype)
        return {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}

    # --- 3. prepare_timesteps ---

    def make_schedule(self, request: Request, steps: int, strength: float) -> tuple[Any, torch.Tensor]:
        """A fresh scheduler for `steps` and the timesteps that run at `strength` (1: all)."""
        scheduler = request.sampler.make(self.model.scheduler_config, request.noise_schedule, request.seeds)
        request.sampler.set_timesteps(scheduler, steps, request.noise_schedule, request.schedule_rho, self.device)
        timesteps = scheduler.timesteps
        if strength < 1.0:
            # As diffusers' img2img: skip the noisiest steps; at least one step always runs.
            kept = max(1, min(int(steps * strength), steps))
            start = (steps - kept) * scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
        return scheduler, timesteps

    def prepare_timesteps(self, job: Job) -> None:
        request = job.request
        from_image = request.action != Action.TXT2IMG or job.hires_pass
        scheduler, timesteps = self.make_schedule(request, request.steps, request.strength if from_image else 1.0)
        job.scheduler, job.timesteps = scheduler, timesteps
        accepted = inspect.signature(scheduler.step).parameters
        job.step_kwargs = {}
        if "eta" in accepted:
            job.step_kwargs["eta"] = 0.0
        if "generator" in accepted:
            job.step_kwargs["generator"] = job.generators

    # --- 4. prepare_latents ---

    def noise(self, job: Job, channels: int = 4) -> torch.Tensor:
        factor = self.model.vae_scale_factor
        shape = (job.n_images, channels, job.request.height // factor, job.request.width // factor)
        return randn_tensor(shape, generator=job.generators, device=self.device, dtype=self.backend.dtype)

    def prepare_latents(self, job: Job) -> None:
        request = job.request
        channels = self.model.vae.config.latent_channels
        noise = self.noise(job, channels)
        if request.action == Action.TXT2IMG:
            job.latents = noise * job.scheduler.init_noise_sigma
            return
        if request.action in FROM_IMAGE:
            size = (request.width, request.height)
            # Enhance enlarges with the chosen upscaler; the others only fit the image to the size.
            image = (self.upscalers.upscale(request.image, size, request.upscaler) if request.action == Action.ENHANCE
                     else request.image.resize(size, Image.LANCZOS))
            start = self.encode_image(image)
            job.latents = self.noised(job, start.repeat(job.n_images, 1, 1, 1), noise)
            return
        self._prepare_inpainting(job, noise)

    def encode_image(self, image: Image.Image) -> torch.Tensor:
        tensor = self.image_processor.preprocess(image, height=image.height, width=image.width)
        return self.backend.vae_encode(tensor.to(self.device)) * self.scaling_factor

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.cat([self.encode_image(image) for image in images])

    def noised(self, job: Job, start: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        first = job.timesteps[:1].repeat(job.n_images)
        latents = job.scheduler.add_noise(start, noise, first)
        if job.request.extra_noise > 0:
            # NovelAI's "noise": more noise than the strength implies, in units of this step's
            # noise level (read off the scheduler, whatever its parameterisation).
            level = job.scheduler.add_noise(torch.zeros_like(start[:1]), torch.ones_like(start[:1]), first[:1])
            latents = latents + job.request.extra_noise * level * self.noise(job, start.shape[1])
        return latents

    def _prepare_inpainting(self, job: Job, noise: torch.Tensor) -> None:
        request = job.request
        job.region = region = self._region(request)
        factor = self.model.vae_scale_factor
        mask = torch.from_numpy(pixels.to_array(region.mask)).float().div(255)[None, None].to(self.device)
        # A latent cell is redrawn if any pixel under it is (area mean > 0).
        latent_size = (request.height // factor, request.width // factor)
        job.latent_mask = (F.interpolate(mask, size=latent_size, mode="area") > 0).to(self.backend.dtype)
        job.latent_mask = job.latent_mask.repeat(job.n_images, 1, 1, 1)
        original = self.encode_image(region.original).repeat(job.n_images, 1, 1, 1)
        job.image_latents, job.noise = original, noise
        content = request.masked_content
        if content in (MaskedContent.ORIGINAL, MaskedContent.FILL):
            start = self.encode_image(region.image).repeat(job.n_images, 1, 1, 1) if content == MaskedContent.FILL \
                else original
        elif content == MaskedContent.LATENT_NOISE:
            start = original * (1 - job.latent_mask) + noise * job.latent_mask
        else:
            start = original * (1 - job.latent_mask)
        if content == MaskedContent.LATENT_NOISE and request.strength == 1.0:
            job.latents = noise * job.scheduler.init_noise_sigma
        else:
            job.latents = self.noised(job, start, noise)
        if self.model.inpainting_unet:
            # Dedicated inpainting UNets see the mask and the image with the masked area blanked.
            masked_image = self.image_processor.preprocess(region.original, height=request.height,
                                                           width=request.width).to(self.device)
            masked_image = masked_image * (mask < 0.5)
            masked_latents = self.backend.vae_encode(masked_image) * self.scaling_factor
            extra = torch.cat([job.latent_mask, masked_latents.repeat(job.n_images, 1, 1, 1)], dim=1)
            job.unet_extra = torch.cat([extra] * 2) if job.do_cfg else extra

    def _region(self, request: Request) -> Region:
        image, mask = request.image, request.mask
        composite = pixels.blur_mask(mask, request.mask_blur)
        if request.only_masked:
            bounds = composite.getbbox() or mask.getbbox()
            box = pixels.expand_region(bounds, request.only_masked_padding, image.size,
                                       request.width / request.height)
        else:
            box = (0, 0, *image.size)
        size = (request.width, request.height)
        crop_image = image.crop(box).resize(size, Image.LANCZOS)
        crop_mask = pixels.binary_mask(mask.crop(box).resize(size, Image.BILINEAR))
        filled = pixels.fill_masked(crop_image, crop_mask) if request.masked_content == MaskedContent.FILL \
            else crop_image
        return Region(box=box, original=crop_image, image=filled, mask=crop_mask, composite=composite)

    # --- 5. one denoising step over several jobs ---

    def denoise(self, jobs: list[Job]) -> None:
        """One UNet call for every job (they share a key), then each job's own step."""
        inputs, timesteps = [], []
        for job in jobs:
            self._condition(job)
            t = job.timesteps[job.index]
            latent_input = torch.cat([job.latents] * 2) if job.do_cfg else job.latents
            latent_input = job.scheduler.scale_model_input(latent_input, t)
            if job.unet_extra is not None:
                latent_input = torch.cat([latent_input, job.unet_extra], dim=1)
            inputs.append(latent_input)
            timesteps.append(t)
        if len(jobs) == 1:
            sample, embeds, added, timestep = inputs[0], jobs[0].embeds, jobs[0].added, timesteps[0]
        else:
            sample = torch.cat(inputs)
            embeds = torch.cat([job.embeds for job in jobs])
            added = None if jobs[0].added is None else {
                key: torch.cat([job.added[key] for job in jobs]) for key in jobs[0].added}
            if all(bool(t == timesteps[0]) and t.dtype == timesteps[0].dtype for t in timesteps):
                timestep = timesteps[0]
            else:
                # Jobs at different steps share the call: one timestep per row.
                timestep = torch.cat([t.float().reshape(1).expand(job.rows) for t, job in zip(timesteps, jobs)])
        extras = guided.unet_extras(self, jobs, inputs, timesteps)
        if extras is None:
            noise_pred = self.backend.unet(sample, timestep, embeds, added)
        else:
            noise_pred = self.backend.unet(sample, timestep, embeds, added, extras)
        offset = 0
        for job, t in zip(jobs, timesteps):
            self._step(job, t, noise_pred[offset:offset + job.rows])
            offset += job.rows

    def _step(self, job: Job, t: torch.Tensor, noise_pred: torch.Tensor) -> None:
        request = job.request
        if job.do_cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + request.guidance_scale * (text - uncond)
            if request.guidance_rescale > 0:
                noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale=request.guidance_rescale)
        if request.dynamic_thresholding:
            noise_pred = thresholding.threshold(job.scheduler, t, job.latents, noise_pred, request.dynamic_thresholding,
                                                request.dynamic_thresholding_max)
        output = job.scheduler.step(noise_pred, t, job.latents, **job.step_kwargs, return_dict=True)
        job.latents = output.prev_sample
        job.preview_latents = getattr(output, "pred_original_sample", None)
        if job.latent_mask is not None and not self.model.inpainting_unet:
            # Keep the unmasked area on the input's own trajectory (diffusers' inpainting blend).
            proper = job.image_latents
            if job.index < len(job.timesteps) - 1:
                proper = job.scheduler.add_noise(proper, job.noise, job.timesteps[job.index + 1:job.index + 2])
            job.latents = (1 - job.latent_mask) * proper + job.latent_mask * job.latents
        job.index += 1
        job.last_stepped = time.perf_counter()
        previews: list[bytes] = []
        every = request.preview_every
        if every and job.index % every == 0 and not job.done:
            source = job.preview_latents if job.preview_latents is not None else job.latents
            previews = pixels.preview_pngs(source, self.model.family)
        job.emit(Progress(job.step_offset + job.index, job.step_offset + job.total_steps + job.steps_after, previews))

    # --- 6. decode and postprocess ---

    def decode(self, job: Job) -> list[Image.Image]:
        decoded = self.backend.vae_decode(job.latents / self.scaling_factor)
        return self.image_processor.postprocess(decoded.float() if decoded.dtype == torch.bfloat16 else decoded,
                                                output_type="pil", do_denormalize=[True] * decoded.shape[0])

    def finish(self, job: Job) -> list[GeneratedImage]:
        request = job.request
        frames = [job.upscaled] if request.action == Action.UPSCALE else self.decode(job)
        results = []
        for index, (frame, seed) in enumerate(zip(frames, request.seeds)):
            if job.region is not None:
                frame = self._paste(job.region, request.image, frame)
            parameters = self.parameters_text(request, seed)
            text = {"parameters": parameters, "fabula": json.dumps(self.parameters_json(request, seed))}
            if self.signer is not None:
                text[SIGNATURE_CHUNK] = self.signer.signature_text(frame, text)
            png = pixels.encode_png(frame, text)
            image = GeneratedImage(index, seed, png, parameters, frame.width, frame.height)
            job.emit(image)
            results.append(image)
        return results

    @staticmethod
    def _paste(region: Region, original: Image.Image, generated: Image.Image) -> Image.Image:
        left, top, right, bottom = region.box
        result = original.copy()
        patch = generated.resize((right - left, bottom - top), Image.LANCZOS)
        result.paste(patch, (left, top), mask=region.composite.crop(region.box))
        return result

    def parameters_json(self, request: Request, seed: int) -> dict[str, Any]:
        values: dict[str, Any] = {
            "action": request.action.value, "prompt": request.user_prompt,
            "negative_prompt": request.user_negative_prompt, "negative_preset": request.negative_preset,
            "quality_tags": request.quality_tags, "effective_prompt": request.prompt,
            "effective_negative_prompt": request.negative_prompt, "width": request.width, "height": request.height,
            "steps": request.steps, "guidance_scale": request.guidance_scale,
            "guidance_rescale": request.guidance_rescale, "sampler": request.sampler.name,
            "noise_schedule": request.noise_schedule, "dialect": request.dialect.value, "seed": seed,
            "model": self.model.name, "model_hash": self.model.short_hash, "version": VERSION,
            # Readers (the SDK's exporters) mark pictures of the built-in untrained models as noise.
            "builtin_model": self.model.source.startswith(BUILTIN_PREFIX),
        }
        if request.action != Action.TXT2IMG:
            values.update(strength=request.strength)
        if request.action == Action.IMG2IMG:
            values.update(extra_noise=request.extra_noise)
        if request.action in (Action.INPAINT, Action.OUTPAINT):
            values.update(mask_blur=request.mask_blur, masked_content=request.masked_content.value)
        if request.action == Action.INPAINT:
            values.update(only_masked=request.only_masked, only_masked_padding=request.only_masked_padding)
        if request.action == Action.OUTPAINT:
            values.update(dict(zip(("left", "right", "top", "bottom"), request.outpaint)))
        values.update(guided.parameters_json(request.guidance))
        values.update(metadata.extra_json(request))
        return values

    def parameters_text(self, request: Request, seed: int) -> str:
        fields: dict[str, Any] = {
            "Steps": request.steps, "Sampler": request.sampler.display_name,
            "Schedule type": metadata.SCHEDULE_NAMES[request.noise_schedule],
            "CFG scale": _number(request.guidance_scale), "Seed": seed, "Size": f"{request.width}x{request.height}",
            "Model hash": self.model.short_hash, "Model": self.model.name,
        }
        if request.guidance_rescale:
            fields["CFG Rescale"] = _number(request.guidance_rescale)
        if request.action != Action.TXT2IMG:
            fields["Denoising strength"] = _number(request.strength)
        if request.extra_noise:
            fields["Extra noise"] = _number(request.extra_noise)
        if request.action in (Action.INPAINT, Action.OUTPAINT):
            fields["Mask blur"] = request.mask_blur
            fields["Masked content"] = request.masked_content.value.replace("_", " ")
        if request.action == Action.INPAINT and request.only_masked:
            fields["Inpaint area"] = "Only masked"
            fields["Masked area padding"] = request.only_masked_padding
        if request.action == Action.OUTPAINT:
            fields["Outpaint"] = "left {} right {} top {} bottom {}".format(*request.outpaint)
        fields.update(guided.parameters_text(request.guidance))
        fields.update(metadata.extra_text(request))
        fields["Version"] = VERSION
        return pixels.format_parameters(request.prompt, request.negative_prompt, fields)


def _number(value: float) -> str:
    return f"{value:g}"
