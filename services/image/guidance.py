"""Reference images, control images and character prompts in the pipeline: validation of the
three lists (`check_guidance`), what a model needs loaded for them (`GuidanceModels`), their
per-job preparation, and the UNet call's extras for a group of jobs (`unet_extras`).

The work itself is in references.py (IP-Adapter), control.py and preprocessors.py (ControlNet),
regions.py and attention.py (regional prompting); pipeline.py calls in here at its numbered
steps: tokenize (characters' prompts), encode_prompt (their rows), prepare (the rest), denoise
(the extras of each UNet call).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from services.image import attention, regions
from services.image.backends.base import UNetExtras
from services.image.control import Control, RawControl, check_controls, control_tensor, controlnet_sources, \
    load_controlnets
from services.image.preprocessors import preprocess
from services.image.references import IPAdapter, RawReference, Reference, check_references, load_ip_adapter
from services.image.regions import Character, RawCharacter, check_characters
from services.image.settings import IPAdapterOptions
from services.toolkit.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from services.image.models import LoadedModel
    from services.image.pipeline import ImagePipeline, Job
    from services.image.settings import ImageSettings

log = logging.getLogger(__name__)


@dataclass
class RawGuidance:
    references: list[RawReference] = field(default_factory=list)
    controls: list[RawControl] = field(default_factory=list)
    characters: list[RawCharacter] = field(default_factory=list)


@dataclass
class Guidance:
    references: list[Reference] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    characters: list[Character] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.references or self.controls or self.characters)


def ip_adapter_options(model: LoadedModel) -> IPAdapterOptions | None:
    """The model's IP-Adapter (built-in models get the tiny one when none is configured)."""
    from services.image.models import BUILTIN_PREFIX
    from services.image.references import TINY_IP_ADAPTER

    if model.options.ip_adapter is not None:
        return model.options.ip_adapter
    if model.source.startswith(BUILTIN_PREFIX):
        return IPAdapterOptions(weights=TINY_IP_ADAPTER)
    return None


def check_guidance(raw: RawGuidance, model: LoadedModel, settings: ImageSettings) -> Guidance:
    """Validate the three lists; every count before any image is decoded."""
    for name, items, limit in (("references", raw.references, settings.max_references),
                               ("controls", raw.controls, settings.max_controls),
                               ("characters", raw.characters, settings.max_characters)):
        if len(items) > limit:
            raise InvalidArgument(name, f"<{len(items)} {name}>", f"at most {limit} are allowed")
    characters = check_characters(raw.characters, max_characters=settings.max_characters,
                                  max_prompt_chars=settings.max_prompt_chars)
    if raw.references and ip_adapter_options(model) is None:
        raise FailedPrecondition(f"references: model {model.name} has no IP-Adapter; the operator sets one with the "
                                 "model's `ip_adapter` in FABULA_IMAGE_MODELS", field="references")
    references = check_references(raw.references, max_references=settings.max_references,
                                  max_input_pixels=settings.max_input_pixels)
    controls = check_controls(raw.controls, max_controls=settings.max_controls,
                              max_input_pixels=settings.max_input_pixels, model=model,
                              available=set(controlnet_sources(model)))
    return Guidance(references, controls, characters)


class GuidanceModels:
    """A model's IP-Adapter and ControlNets, loaded when the model is, and the cross-attention
    processors that read per-row regions and references installed on its UNet."""

    def __init__(self, model: LoadedModel, settings: ImageSettings) -> None:
        self.settings = settings
        options = ip_adapter_options(model)
        self.ip_adapter: IPAdapter | None = load_ip_adapter(model, options, settings.cache_dir) if options else None
        self.controlnets = load_controlnets(model, settings.cache_dir)
        attention.install(model.unet, self.ip_adapter.layers if self.ip_adapter else None)

    def preprocess(self, control: Control, width: int, height: int):
        return preprocess(control.source, width, height, depth_model=self.settings.depth_model,
                          background_removal_model=self.settings.background_removal_model)


@dataclass
class JobGuidance:
    """A job's prepared guidance: region masks, reference tokens, control images."""

    region_masks: torch.Tensor | None = None  # [segments, H, W] at latent size: the base prompt, each character
    ip_tokens: torch.Tensor | None = None  # [rows, references, tokens, dim]
    ip_scales: torch.Tensor | None = None  # [rows, references]
    controls: list[tuple[Control, torch.Tensor]] = field(default_factory=list)  # with [rows, 3, H, W] images
    base_tokens: int = 0  # the base prompt's share of the text context (what ControlNets see)


def prepare(pipeline: ImagePipeline, job: Job) -> None:
    """After the latents: region masks, reference tokens and control images for `job`."""
    guidance: Guidance = job.request.guidance
    if not guidance:
        job.guidance = None
        return
    models: GuidanceModels = pipeline.guidance
    request, device = job.request, pipeline.device
    prepared = JobGuidance()
    height, width = job.latents.shape[2], job.latents.shape[3]
    segment = job.embeds.shape[1] // (1 + len(guidance.characters))
    prepared.base_tokens = segment
    if guidance.characters:
        prepared.region_masks = regions.segment_masks(guidance.characters, height, width).to(device)
    if guidance.references:
        guided, unguided = models.ip_adapter.tokens(guidance.references)
        n = job.n_images
        rows = [unguided[None].expand(n, *unguided.shape)] if job.do_cfg else []
        rows.append(guided[None].expand(n, *guided.shape))
        prepared.ip_tokens = torch.cat(rows).to(device)
        scales = torch.tensor([r.strength for r in guidance.references], device=device)
        prepared.ip_scales = scales[None].expand(job.rows, -1)
    for control in guidance.controls:
        image = models.preprocess(control, request.width, request.height)
        tensor = control_tensor(image, device, pipeline.backend.dtype)
        prepared.controls.append((control, tensor.expand(job.rows, -1, -1, -1)))
    job.guidance = prepared


def _pad(tensors: list[torch.Tensor | None], rows: list[int], fill: float) -> torch.Tensor:
    """Stack per-job tensors along rows, padding the jobs without one (and shorter ones) with `fill`."""
    template = next(t for t in tensors if t is not None)
    width = max(t.shape[1] for t in tensors if t is not None)
    parts = []
    for tensor, count in zip(tensors, rows):
        if tensor is None:
            parts.append(torch.full((count, width, *template.shape[2:]), fill, dtype=template.dtype,
                                    device=template.device))
            continue
        if tensor.shape[1] < width:
            pad = torch.full((count, width - tensor.shape[1], *template.shape[2:]), fill, dtype=template.dtype,
                             device=template.device)
            tensor = torch.cat([tensor, pad], dim=1)
        parts.append(tensor)
    return torch.cat(parts)


def unet_extras(pipeline: ImagePipeline, jobs: list[Job], inputs: list[torch.Tensor],
                timesteps: list[torch.Tensor]) -> UNetExtras | None:
    """The extras of one UNet call over `jobs` (None when none of them has guidance)."""
    prepared = [job.guidance for job in jobs]
    if all(item is None for item in prepared):
        return None
    rows = [job.rows for job in jobs]
    latent_size = (jobs[0].latents.shape[2], jobs[0].latents.shape[3])
    guidance = attention.AttentionGuidance(latent_size)
    if any(item is not None and item.region_masks is not None for item in prepared):
        guidance.context_tokens = jobs[0].embeds.shape[1]
        guidance.regions = [(item.region_masks, item.base_tokens)
                            if item is not None and item.region_masks is not None else None for item in prepared]
        if len(jobs) > 1:
            guidance.mask_rows = torch.repeat_interleave(torch.arange(len(jobs), device=pipeline.device),
                                                         torch.tensor(rows, device=pipeline.device))
    if any(item is not None and item.ip_tokens is not None for item in prepared):
        guidance.ip_tokens = _pad([item.ip_tokens if item else None for item in prepared], rows, 0.0)
        guidance.ip_scales = _pad([item.ip_scales if item else None for item in prepared], rows, 0.0)
    down, mid = _control_residuals(pipeline, jobs, inputs, timesteps)
    kwargs = {"guidance": guidance} if guidance.regions is not None or guidance.ip_tokens is not None else None
    if kwargs is None and down is None:
        return None
    return UNetExtras(down_residuals=down, mid_residual=mid, cross_attention_kwargs=kwargs)


@torch.inference_mode()
def _control_residuals(pipeline: ImagePipeline, jobs: list[Job], inputs: list[torch.Tensor],
                       timesteps: list[torch.Tensor]):
    """Each job's ControlNet residuals (summed over its active controls), zeros for the others."""
    per_job: list[tuple[list[torch.Tensor], torch.Tensor] | None] = []
    for job, sample, t in zip(jobs, inputs, timesteps):
        item = job.guidance
        total = None
        if item is not None and item.controls:
            fraction_done, fraction_next = job.index / job.total_steps, (job.index + 1) / job.total_steps
            latents = sample[:, :4]  # inpainting UNets' extra channels are theirs, not the ControlNet's
            context = job.embeds[:, :item.base_tokens]
            for control, image in item.controls:
                if fraction_done < control.start or fraction_next > control.end + 1e-9:
                    continue
                network = pipeline.guidance.controlnets[control.controlnet]
                down, mid = network(latents, t, encoder_hidden_states=context, controlnet_cond=image,
                                    conditioning_scale=control.strength, added_cond_kwargs=job.added,
                                    return_dict=False)
                if total is None:
                    total = (list(down), mid)
                else:
                    total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
        per_job.append(total)
    if all(item is None for item in per_job):
        return None, None
    template = next(item for item in per_job if item is not None)
    downs, mids = [], []
    for job, item in zip(jobs, per_job):
        if item is None:
            item = ([torch.zeros((job.rows, *d.shape[1:]), dtype=d.dtype, device=d.device) for d in template[0]],
                    torch.zeros((job.rows, *template[1].shape[1:]), dtype=template[1].dtype,
                                device=template[1].device))
        downs.append(item[0])
        mids.append(item[1])
    return [torch.cat(parts) for parts in zip(*downs)], torch.cat(mids)


def parameters_json(guidance: Guidance) -> dict:
    """What the PNG's "fabula" chunk records of the guidance (settings, not the uploaded images)."""
    values: dict = {}
    if guidance.references:
        values["references"] = [{"strength": r.strength, "information_extracted": r.information_extracted}
                                for r in guidance.references]
    if guidance.controls:
        values["controls"] = [{"kind": c.source.kind.value, "controlnet": c.controlnet, "strength": c.strength,
                               "start": c.start, "end": c.end} for c in guidance.controls]
    if guidance.characters:
        values["characters"] = [{"prompt": c.prompt, "negative_prompt": c.negative_prompt,
                                 "box": [round(v, 4) for v in c.box], "center": c.center}
                                for c in guidance.characters]
    return values


def parameters_text(guidance: Guidance) -> dict[str, str]:
    """Fields of the A1111 "parameters" line (quoted by images.format_parameters); ControlNet units
    as A1111's ControlNet extension writes them."""
    fields: dict[str, str] = {}
    for index, control in enumerate(guidance.controls):
        fields[f"ControlNet {index}"] = (f"Module: {control.source.kind.value}, Model: {control.controlnet}, "
                                         f"Weight: {control.strength:g}, Guidance Start: {control.start:g}, "
                                         f"Guidance End: {control.end:g}")
    for index, reference in enumerate(guidance.references):
        fields[f"Reference {index}"] = (f"Strength: {reference.strength:g}, "
                                        f"Information extracted: {reference.information_extracted:g}")
    for index, character in enumerate(guidance.characters):
        fields[f"Character {index}"] = f"{character.prompt} @ " + ",".join(f"{v:g}" for v in character.box)
    return fields


def describe(models: GuidanceModels | None) -> dict:
    if models is None:
        return {"references": False, "controlnets": []}
    return {"references": models.ip_adapter is not None, "controlnets": sorted(models.controlnets)}


__all__ = ["Guidance", "GuidanceModels", "JobGuidance", "RawGuidance", "check_guidance", "prepare", "unet_extras"]
