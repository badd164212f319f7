"""The image service's domain entry point: models, their pipelines and batchers, no gRPC."""

from __future__ import annotations

import asyncio
import logging

import torch

from services.image import metadata
from services.image.batcher import Batcher, Handle
from services.image.backends import create_backend
from services.image.conditioning import CHUNK_TOKENS, stage_prompt
from services.image.control import RawControl, check_source
from services.image.events import Accepted, PromptReport
from services.image.guidance import GuidanceModels
from services.image.images import encode_png
from services.image.models import LoadedModel, load_model
from services.image.params import MAX_SIDE, Action, RawRequest, check_dialect, check_inputs, fit_size
from services.image.pipeline import ImagePipeline, Job
from services.image.preprocessors import preprocess
from services.image.prompts import join_tags
from services.image.samplers import SAMPLERS
from services.image.settings import ImageSettings
from services.image.signing import ImageSigner
from services.image.tags import Suggestion, TagIndex
from services.image.upscale import Upscalers
from services.toolkit.errors import InvalidArgument

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def torch_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


class ImageGenerator:
    def __init__(self, settings: ImageSettings) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = torch_dtype(settings.dtype, self.device)
        self.pipelines: dict[str, ImagePipeline] = {}
        self.batchers: dict[str, Batcher] = {}
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.upscalers = Upscalers.load(settings.upscaler_files(), self.device, settings.upscaler_tile)
        self.signer = ImageSigner.from_settings(settings.signing_key, settings.signing_key_path,
                                                settings.trusted_signing_keys)
        self.tags = TagIndex.load(settings.tags_path)
        log.info("images are signed with key %s", self.signer.key_id)

    @property
    def default_model(self) -> str:
        return self.settings.default_model_name

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {name: pipeline.model for name, pipeline in self.pipelines.items()}

    def load(self) -> None:
        """Load every configured model and its back end (blocking; call from a thread)."""
        for name, options in self.settings.model_options().items():
            model = load_model(name, options, cache_dir=self.settings.cache_dir, device=self.device, dtype=self.dtype)
            self.add_model(model)

    def add_model(self, model: LoadedModel) -> None:
        backend = create_backend(model, self.settings, self.device)
        # Back ends that cannot run them get none; requests with guidance are refused there.
        guidance = GuidanceModels(model, self.settings) if backend.supports_extras else None
        pipeline = ImagePipeline(model, backend, self.settings.max_prompt_chunks, guidance)
        pipeline.upscalers, pipeline.signer = self.upscalers, self.signer
        self.pipelines[model.name] = pipeline
        self.batchers[model.name] = Batcher(pipeline, max_batch_images=self.settings.max_batch_images,
                                            max_queue=self.settings.max_queue,
                                            max_per_user=self.settings.max_generations_per_user,
                                            worker_nice=self.settings.worker_nice)

    async def warm_up(self) -> None:
        """One small generation per model, so the first user does not pay for lazy set-up."""
        if not self.settings.warmup_steps:
            return
        for name in self.pipelines:
            raw = RawRequest(model=name, prompt="warm-up", width=64, height=64, steps=self.settings.warmup_steps,
                             seed=0, sampler="euler")
            _, handle = await self.submit(raw)
            async for _ in handle:
                pass
            log.info("model %s warm", name)

    async def submit(self, raw: RawRequest, owner: str = "") -> tuple[Accepted, Handle]:
        """Hold a place in the model's queue for `owner`, then validate (off the event loop: images
        are decoded), queue in that place, and return the first event.

        The place comes first so that a request there is no room for (the queue is full, the user
        is at their cap) is refused before its uploaded image is decoded."""
        batcher = self.batchers.get(raw.model or self.default_model)
        if batcher is None:
            raise InvalidArgument("params.model", raw.model,
                                  f"unknown model; choose from {', '.join(sorted(self.batchers))}")
        with batcher.reserve(owner, max(1, raw.n_images)) as place:
            job = await asyncio.to_thread(self._job, raw)
            pipeline = self.pipelines[job.request.model.name]
            request = job.request
            pipeline.check_shape(job)
            handle, ahead = batcher.submit(job, place)
        prompt, negative = pipeline.reports(job)
        # The size the images will have (a hires fix's second pass, not its first).
        final = request.hires or request
        accepted = Accepted(seeds=request.seeds, width=final.width, height=final.height,
                            steps=request.steps, sampler=request.sampler.name, model=request.model.name,
                            prompt=prompt, negative_prompt=negative, queue_position=ahead)
        return accepted, handle

    def _job(self, raw: RawRequest) -> Job:
        if raw.action == Action.VARIATIONS and not raw.prompt.strip():
            self._prompt_from_image(raw)
        request = check_inputs(raw, self.models, self.default_model, self.settings, self.upscalers)
        return Job(request, self.pipelines[request.model.name].tokenize(request), emit=lambda event: None)

    def _prompt_from_image(self, raw: RawRequest) -> None:
        """Variations without a prompt take the prompt (and what was not given) from the image."""
        source = metadata.prompt_source(raw.image, set(self.pipelines), max_pixels=self.settings.max_input_pixels)
        if source is None or not source.prompt.strip():
            raise InvalidArgument("params.prompt", raw.prompt, "variations need a prompt, or an image whose "
                                                               "metadata (Fabula's or A1111's) records one")
        raw.prompt, raw.negative_prompt, raw.dialect = source.prompt, source.negative_prompt, source.dialect
        raw.negative_preset = raw.negative_preset or source.negative_preset
        if raw.quality_tags is None:
            raw.quality_tags = source.quality_tags
        raw.model = raw.model or source.model
        raw.sampler = raw.sampler or source.sampler
        raw.steps = raw.steps or source.steps
        if raw.guidance_scale is None:
            raw.guidance_scale = source.guidance_scale

    def read_metadata(self, png: bytes) -> metadata.Metadata:
        return metadata.read(png, self.signer, set(self.pipelines), max_pixels=self.settings.max_input_pixels)

    def suggest_tags(self, query: str, limit: int = 0) -> list[Suggestion]:
        return self.tags.suggest(query, limit)

    def tokenize(self, model_name: str, prompt: str, quality_tags: bool = False, dialect: str = "",
                 steps: int = 0) -> PromptReport:
        pipeline = self.pipelines.get(model_name or self.default_model)
        if pipeline is None:
            raise InvalidArgument("model", model_name, f"unknown model; choose from {', '.join(sorted(self.pipelines))}")
        if len(prompt) > self.settings.max_prompt_chars:
            raise InvalidArgument("prompt", prompt, f"must be at most {self.settings.max_prompt_chars} characters")
        language = check_dialect("dialect", dialect)
        model = pipeline.model
        steps = steps or model.defaults.steps
        if not 1 <= steps <= self.settings.max_steps:
            raise InvalidArgument("steps", steps, f"must be between 1 and {self.settings.max_steps}")
        if quality_tags and model.quality_tags:
            prompt = (join_tags(model.quality_tags, prompt) if model.quality_tags_position == "prepend"
                      else join_tags(prompt, model.quality_tags))
        staged = stage_prompt(pipeline.tokenizers, prompt, language, steps)
        return PromptReport.build(pipeline.tokenizers[0], staged, prompt, language)

    def preprocess_control(self, raw: RawControl, width: int, height: int) -> tuple[bytes, int, int]:
        """The control image a generation would use (PNG), at width x height (0: the source's size,
        fitted to max_pixels in multiples of 64; a pose's canvas)."""
        source = check_source(raw, "control", max_input_pixels=self.settings.max_input_pixels)
        for name, value in (("width", width), ("height", height)):
            if value and (value % 64 or not 64 <= value <= MAX_SIDE):
                raise InvalidArgument(name, value, f"must be a multiple of 64 between 64 and {MAX_SIDE}")
        if not width or not height:
            own = (source.pose.width, source.pose.height) if source.pose is not None else source.image.size
            fit = fit_size(*own, self.settings.max_pixels)
            width, height = width or fit[0], height or fit[1]
        if width * height > self.settings.max_pixels:
            raise InvalidArgument("width", f"{width}x{height}",
                                  f"width x height must be at most {self.settings.max_pixels} pixels")
        image = preprocess(source, width, height, depth_model=self.settings.depth_model,
                           background_removal_model=self.settings.background_removal_model)
        return encode_png(image, {}), width, height

    @property
    def chunk_tokens(self) -> int:
        return CHUNK_TOKENS

    @property
    def samplers(self):
        return SAMPLERS

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.stop()
