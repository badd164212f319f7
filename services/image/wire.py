"""Every translation between `fabula.image.v1` messages and the image service's domain values.

Requests become `RawRequest`s (unvalidated: params.check_inputs names the field that is wrong,
including enum numbers this build does not know); domain events, prompt reports and the served
models become response messages. Nothing here decides anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabula.image.v1 import image_pb2
from services.image.events import Accepted, Event, Finished, GeneratedImage, Progress, PromptReport, StageReport
from services.image.control import RawControl
from services.image.guidance import RawGuidance, describe
from services.image.metadata import Metadata
from services.image.params import Action, RawRequest
from services.image.references import RawReference
from services.image.regions import RawCharacter
from services.image.prompts import Dialect
from services.image.signing import SCHEME, ImageSigner, Verdict
from services.image.tags import Suggestion

if TYPE_CHECKING:
    from services.image.generator import ImageGenerator
    from services.image.pipeline import ImagePipeline
    from services.image.samplers import SamplerSpec

# Domain names (as params.py and the PNG parameters spell them) ⇄ protobuf enum numbers; ""
# is "not given", which validation resolves to the model's default.
NOISE_SCHEDULES = {"": image_pb2.NOISE_SCHEDULE_UNSPECIFIED, "native": image_pb2.NOISE_SCHEDULE_NATIVE,
                   "karras": image_pb2.NOISE_SCHEDULE_KARRAS,
                   "exponential": image_pb2.NOISE_SCHEDULE_EXPONENTIAL,
                   "polyexponential": image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL}
MASKED_CONTENTS = {"": image_pb2.MASKED_CONTENT_UNSPECIFIED, "original": image_pb2.MASKED_CONTENT_ORIGINAL,
                   "fill": image_pb2.MASKED_CONTENT_FILL, "latent_noise": image_pb2.MASKED_CONTENT_LATENT_NOISE,
                   "latent_nothing": image_pb2.MASKED_CONTENT_LATENT_NOTHING}
DIALECTS = {Dialect.NOVELAI: image_pb2.PROMPT_DIALECT_NOVELAI, Dialect.A1111: image_pb2.PROMPT_DIALECT_A1111}
_DIALECT_NAMES = {number: dialect.value for dialect, number in DIALECTS.items()}
_NOISE_SCHEDULE_NAMES = {number: name for name, number in NOISE_SCHEDULES.items()}
_MASKED_CONTENT_NAMES = {number: name for name, number in MASKED_CONTENTS.items()}
CONTROL_KINDS = {"": image_pb2.CONTROL_KIND_UNSPECIFIED, "canny": image_pb2.CONTROL_KIND_CANNY,
                 "lineart": image_pb2.CONTROL_KIND_LINEART, "scribble": image_pb2.CONTROL_KIND_SCRIBBLE,
                 "pose": image_pb2.CONTROL_KIND_POSE, "depth": image_pb2.CONTROL_KIND_DEPTH,
                 "background_removal": image_pb2.CONTROL_KIND_BACKGROUND_REMOVAL, "raw": image_pb2.CONTROL_KIND_RAW}
_CONTROL_KIND_NAMES = {number: name for name, number in CONTROL_KINDS.items()}


def _enum_name(names: dict[int, str], number: int) -> str:
    # An enum number this build does not know stays visible, so validation can name it.
    return names.get(number, f"<unknown {number}>")


def _optional(message, field: str):
    """The field's value if the caller set it, else None (proto3 `optional` fields)."""
    return getattr(message, field) if message.HasField(field) else None


# --- requests ---

def raw_request_from_pb(message: image_pb2.GenerateRequest) -> RawRequest:
    params = message.params
    raw = RawRequest(
        model=params.model, prompt=params.prompt, negative_prompt=params.negative_prompt,
        negative_preset=params.negative_preset, quality_tags=_optional(params, "quality_tags"),
        width=params.width, height=params.height, steps=params.steps,
        guidance_scale=_optional(params, "guidance_scale"), guidance_rescale=params.guidance_rescale,
        sampler=params.sampler, noise_schedule=_enum_name(_NOISE_SCHEDULE_NAMES, params.noise_schedule),
        seed=_optional(params, "seed"), n_images=params.n_images, preview_every=params.preview_every,
        dialect=_enum_name(_DIALECT_NAMES, params.dialect), dynamic_thresholding=params.dynamic_thresholding,
        dynamic_thresholding_max=_optional(params, "dynamic_thresholding_max"),
        schedule_rho=_optional(params, "schedule_rho"))
    if params.HasField("hires"):
        hires = params.hires
        raw.hires, raw.hires_scale, raw.hires_width, raw.hires_height = True, hires.scale, hires.width, hires.height
        raw.hires_steps, raw.hires_strength = hires.steps, _optional(hires, "strength")
        raw.hires_upscaler = hires.upscaler
    action = message.WhichOneof("action")
    if action == "img2img":
        source = message.img2img
        raw.action, raw.image, raw.extra_noise = Action.IMG2IMG, source.image, source.extra_noise
        raw.strength = _optional(source, "strength")
    elif action == "inpaint":
        source = message.inpaint
        raw.action, raw.image, raw.mask, raw.mask_blur = Action.INPAINT, source.image, source.mask, source.mask_blur
        raw.strength = _optional(source, "strength")
        raw.masked_content = _enum_name(_MASKED_CONTENT_NAMES, source.masked_content)
        raw.only_masked = source.only_masked
        raw.only_masked_padding = _optional(source, "only_masked_padding")
    elif action == "outpaint":
        source = message.outpaint
        raw.action, raw.image = Action.OUTPAINT, source.image
        raw.left, raw.right, raw.top, raw.bottom = source.left, source.right, source.top, source.bottom
        raw.mask_blur = _optional(source, "mask_blur")
        raw.strength = _optional(source, "strength")
        raw.masked_content = _enum_name(_MASKED_CONTENT_NAMES, source.masked_content)
    elif action == "upscale":
        source = message.upscale
        raw.action, raw.image, raw.scale, raw.upscaler = Action.UPSCALE, source.image, source.scale, source.upscaler
        raw.target_width, raw.target_height = source.width, source.height
    elif action == "enhance":
        source = message.enhance
        raw.action, raw.image, raw.scale, raw.upscaler = Action.ENHANCE, source.image, source.scale, source.upscaler
        raw.strength, raw.extra_noise = _optional(source, "strength"), source.extra_noise
    elif action == "variations":
        source = message.variations
        raw.action, raw.image, raw.strength = Action.VARIATIONS, source.image, _optional(source, "strength")
    raw.guidance = RawGuidance(
        references=[RawReference(item.image, _optional(item, "strength"), _optional(item, "information_extracted"))
                    for item in message.references],
        controls=[control_from_pb(item) for item in message.controls],
        characters=[RawCharacter(item.prompt, item.negative_prompt, item.x, item.y, item.width, item.height,
                                 item.center) for item in message.characters])
    return raw


def control_from_pb(message: image_pb2.Control) -> RawControl:
    return RawControl(kind=_CONTROL_KIND_NAMES.get(message.kind, f"<unknown {message.kind}>"), image=message.image,
                      strength=_optional(message, "strength"), pose_json=message.pose_json,
                      low_threshold=_optional(message, "low_threshold"),
                      high_threshold=_optional(message, "high_threshold"), start=_optional(message, "start"),
                      end=_optional(message, "end"), controlnet=message.controlnet)


def preprocess_args_from_pb(message: image_pb2.PreprocessControlRequest) -> tuple[RawControl, int, int]:
    return control_from_pb(message.control), message.width, message.height


def preprocess_response_to_pb(png: bytes, width: int, height: int) -> image_pb2.PreprocessControlResponse:
    return image_pb2.PreprocessControlResponse(png=png, width=width, height=height)


def raw_request_to_pb(raw: RawRequest) -> image_pb2.GenerateRequest:
    """A request read back from an image's metadata, as the caller would send it (without images)."""
    params = image_pb2.GenerationParams(
        model=raw.model, prompt=raw.prompt, negative_prompt=raw.negative_prompt, negative_preset=raw.negative_preset,
        width=raw.width, height=raw.height, steps=raw.steps, guidance_rescale=raw.guidance_rescale,
        sampler=raw.sampler, noise_schedule=NOISE_SCHEDULES.get(raw.noise_schedule, 0),
        n_images=raw.n_images, dialect=DIALECTS.get(Dialect(raw.dialect) if raw.dialect in ("novelai", "a1111")
                                                    else Dialect.NOVELAI),
        dynamic_thresholding=raw.dynamic_thresholding)
    for name in ("quality_tags", "guidance_scale", "seed", "dynamic_thresholding_max", "schedule_rho"):
        if getattr(raw, name) is not None:
            setattr(params, name, getattr(raw, name))
    if raw.hires:
        params.hires.scale, params.hires.width, params.hires.height = raw.hires_scale, raw.hires_width, raw.hires_height
        params.hires.steps, params.hires.upscaler = raw.hires_steps, raw.hires_upscaler
        if raw.hires_strength is not None:
            params.hires.strength = raw.hires_strength
    message = image_pb2.GenerateRequest(params=params)
    if raw.action == Action.TXT2IMG:
        message.txt2img.SetInParent()
    elif raw.action == Action.IMG2IMG:
        message.img2img.extra_noise = raw.extra_noise
        if raw.strength is not None:
            message.img2img.strength = raw.strength
    elif raw.action == Action.INPAINT:
        inpaint = message.inpaint
        inpaint.mask_blur, inpaint.only_masked = raw.mask_blur or 0, raw.only_masked
        inpaint.masked_content = MASKED_CONTENTS.get(raw.masked_content, 0)
        if raw.strength is not None:
            inpaint.strength = raw.strength
        if raw.only_masked_padding is not None:
            inpaint.only_masked_padding = raw.only_masked_padding
    elif raw.action == Action.OUTPAINT:
        outpaint = message.outpaint
        outpaint.left, outpaint.right, outpaint.top, outpaint.bottom = raw.left, raw.right, raw.top, raw.bottom
        outpaint.masked_content = MASKED_CONTENTS.get(raw.masked_content, 0)
        if raw.mask_blur is not None:
            outpaint.mask_blur = raw.mask_blur
        if raw.strength is not None:
            outpaint.strength = raw.strength
    elif raw.action == Action.UPSCALE:
        message.upscale.width, message.upscale.height = raw.target_width, raw.target_height
        message.upscale.upscaler = raw.upscaler
    elif raw.action == Action.ENHANCE:
        enhance = message.enhance
        enhance.scale, enhance.extra_noise, enhance.upscaler = raw.scale, raw.extra_noise, raw.upscaler
        if raw.strength is not None:
            enhance.strength = raw.strength
    elif raw.action == Action.VARIATIONS:
        message.variations.SetInParent()
        if raw.strength is not None:
            message.variations.strength = raw.strength
    return message


_VERDICTS = {Verdict.ABSENT: image_pb2.SIGNATURE_STATUS_ABSENT, Verdict.VALID: image_pb2.SIGNATURE_STATUS_VALID,
             Verdict.INVALID: image_pb2.SIGNATURE_STATUS_INVALID,
             Verdict.UNKNOWN_KEY: image_pb2.SIGNATURE_STATUS_UNKNOWN_KEY}


def metadata_to_pb(found: Metadata) -> image_pb2.ReadMetadataResponse:
    reply = image_pb2.ReadMetadataResponse(
        source=found.source, parameters=found.parameters, signature=_VERDICTS[found.verification.verdict],
        signing_key_id=found.verification.key_id, builtin_model=found.builtin_model,
        text_chunks=found.text_chunks, unmapped=found.unmapped)
    if found.request is not None:
        reply.request.CopyFrom(raw_request_to_pb(found.request))
    return reply


def signing_key_to_pb(signer: ImageSigner) -> image_pb2.SigningKey:
    return image_pb2.SigningKey(public_key=signer.public_key, key_id=signer.key_id, algorithm="Ed25519",
                                scheme=SCHEME)


def suggestions_to_pb(suggestions: list[Suggestion]) -> image_pb2.SuggestTagsResponse:
    return image_pb2.SuggestTagsResponse(tags=[
        image_pb2.TagSuggestion(name=item.tag.name, text=item.tag.text, category=item.tag.category,
                                post_count=item.tag.post_count, aliases=list(item.tag.aliases),
                                matched_alias=item.matched_alias, match=item.match, score=item.score)
        for item in suggestions])


def tokenize_args_from_pb(message: image_pb2.TokenizeRequest) -> tuple[str, str, bool, str, int]:
    """(model name, prompt, whether to add the model's quality tags, dialect name, steps)."""
    return (message.model, message.prompt, bool(_optional(message, "quality_tags")),
            _enum_name(_DIALECT_NAMES, message.dialect), message.steps)


# --- responses ---

def _chunks_to_pb(chunks: list[dict]) -> list[image_pb2.PromptChunk]:
    return [image_pb2.PromptChunk(token_ids=chunk["token_ids"], tokens=chunk["tokens"], weights=chunk["weights"],
                                  text=chunk["text"]) for chunk in chunks]


def _segments_to_pb(segments: list[dict]) -> list[image_pb2.PromptSegment]:
    return [image_pb2.PromptSegment(text=segment["text"], weight=segment["weight"],
                                    chunk_break=segment["chunk_break"]) for segment in segments]


def stage_report_to_pb(stage: StageReport) -> image_pb2.PromptStage:
    return image_pb2.PromptStage(until_step=stage.until_step, text=stage.text, token_count=stage.token_count,
                                 segments=_segments_to_pb(stage.segments), chunks=_chunks_to_pb(stage.chunks))


def prompt_report_to_pb(report: PromptReport) -> image_pb2.PromptReport:
    return image_pb2.PromptReport(
        token_count=report.token_count, dropped_words=report.dropped_words, effective_prompt=report.effective_prompt,
        chunks=_chunks_to_pb(report.chunks), dialect=DIALECTS[report.dialect],
        segments=_segments_to_pb(report.segments), stages=[stage_report_to_pb(stage) for stage in report.stages])


def event_to_pb(event: Event) -> image_pb2.GenerateResponse:
    """One streamed `GenerateResponse` per domain event."""
    if isinstance(event, Accepted):
        return image_pb2.GenerateResponse(accepted=image_pb2.Accepted(
            seeds=event.seeds, width=event.width, height=event.height, steps=event.steps, sampler=event.sampler,
            model=event.model, prompt=prompt_report_to_pb(event.prompt),
            negative_prompt=prompt_report_to_pb(event.negative_prompt), queue_position=event.queue_position))
    if isinstance(event, Progress):
        return image_pb2.GenerateResponse(progress=image_pb2.Progress(
            step=event.step, total_steps=event.total_steps, previews=event.previews))
    if isinstance(event, GeneratedImage):
        return image_pb2.GenerateResponse(image=image_pb2.Image(
            index=event.index, seed=event.seed, png=event.png, parameters=event.parameters, width=event.width,
            height=event.height))
    if isinstance(event, Finished):
        return image_pb2.GenerateResponse(finished=image_pb2.Finished(
            queue_seconds=event.queue_seconds, generation_seconds=event.generation_seconds))
    raise TypeError(f"no GenerateResponse for {type(event).__name__}")


def tokenize_response_to_pb(report: PromptReport, *, chunk_tokens: int, max_chunks: int
                            ) -> image_pb2.TokenizeResponse:
    return image_pb2.TokenizeResponse(prompt=prompt_report_to_pb(report), chunk_tokens=chunk_tokens,
                                      max_chunks=max_chunks)


def model_info_to_pb(name: str, pipeline: ImagePipeline, *, is_default: bool) -> image_pb2.ModelInfo:
    model = pipeline.model
    defaults = model.defaults
    return image_pb2.ModelInfo(
        name=name, family=model.family, is_default=is_default, default_width=defaults.width,
        default_height=defaults.height, default_steps=defaults.steps,
        default_guidance_scale=defaults.guidance_scale, default_sampler=defaults.sampler,
        quality_tags=model.quality_tags, quality_tags_position=model.quality_tags_position,
        negative_presets=[image_pb2.NegativePreset(name=preset, text=text)
                          for preset, text in model.negative_presets.items()],
        default_negative_preset=model.default_negative_preset, inpainting_unet=model.inpainting_unet,
        # The message's field is still called `engine`; it carries the back end's name.
        engine=pipeline.backend.name, hash=model.short_hash, builtin=model.builtin,
        **describe(pipeline.guidance))


def sampler_info_to_pb(spec: SamplerSpec) -> image_pb2.SamplerInfo:
    return image_pb2.SamplerInfo(name=spec.name, display_name=spec.display_name,
                                 noise_schedules=[NOISE_SCHEDULES[schedule] for schedule in spec.schedules])


def list_models_response_to_pb(generator: ImageGenerator) -> image_pb2.ListModelsResponse:
    settings = generator.settings
    return image_pb2.ListModelsResponse(
        models=[model_info_to_pb(name, pipeline, is_default=name == generator.default_model)
                for name, pipeline in generator.pipelines.items()],
        samplers=[sampler_info_to_pb(spec) for spec in generator.samplers.values()],
        max_pixels=settings.max_pixels, max_steps=settings.max_steps, max_images=settings.max_images,
        max_references=settings.max_references, max_controls=settings.max_controls,
        max_characters=settings.max_characters,
        upscalers=generator.upscalers.names)
