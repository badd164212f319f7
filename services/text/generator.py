"""The text service's domain facade: models with their schedulers and context builders, presets,
and the request preparation that runs before any model work (validation, preset resolution,
prompt assembly). No gRPC here; `server.py` and `wire.py` convert to and from protobuf around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch
from jinja2 import TemplateError

from services.text.context import BuiltContext, ContextBuilder, KeyMatching, LorebookLimits, check_inputs
from services.text.models import LoadedModel, load_model
from services.text.params import GenerationParams, GenerationSpec, Limits
from services.text.presets_store import Preset, find, load_presets
from services.text.scheduler import GenerationHandle, Scheduler, SchedulerConfig
from services.text.sequence import GenerationRequest
from services.text.settings import TextSettings
from services.toolkit.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.toolkit.executor import BoundedExecutor

log = logging.getLogger(__name__)

MAX_DETOKENIZE_IDS = 1 << 20
MAX_COUNT_TEXTS = 1024


@dataclass
class ModelRuntime:
    model: LoadedModel
    scheduler: Scheduler
    builder: ContextBuilder


@dataclass
class Prepared:
    runtime: ModelRuntime
    request: GenerationRequest
    context: BuiltContext | None


def _offsets_function(tokenizer):
    def offsets(text: str) -> list[tuple[int, int]]:
        return list(tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    return offsets


class TextGenerator:
    def __init__(self, settings: TextSettings) -> None:
        self.settings = settings
        self.presets = load_presets(settings.presets_dir)
        find(self.presets, settings.default_preset, "default_preset")
        self.limits = Limits(max_new_tokens=settings.max_new_tokens, max_prompt_chars=settings.max_prompt_chars)
        self.lorebook_limits = LorebookLimits(
            max_keys=settings.lorebook_max_keys, max_key_chars=settings.lorebook_max_key_chars,
            max_regex_scan_chars=settings.lorebook_max_regex_scan_chars,
            search_s=settings.lorebook_search_ms / 1000, total_s=settings.lorebook_total_ms / 1000)
        self.preparation = BoundedExecutor(workers=settings.prepare_workers, max_queue=settings.prepare_queue,
                                           what="text prompt preparation")
        self.runtimes: dict[str, ModelRuntime] = {}
        self.default_model = settings.default_model_name
        if self.default_model not in settings.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {list(settings.models)}")

    # --- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model and build its scheduler (blocking: run it in a thread)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        config = SchedulerConfig(max_batch_size=self.settings.max_batch_size, max_queue=self.settings.max_queue,
                                 max_per_user=self.settings.max_generations_per_user,
                                 prefill_chunk_tokens=self.settings.prefill_chunk_tokens,
                                 prefix_cache_bytes=self.settings.prefix_cache_mb * 2**20,
                                 prefix_block_tokens=self.settings.prefix_block_tokens)
        for name, source in self.settings.models.items():
            model = load_model(name, source, cache_dir=self.settings.cache_dir, device=self.settings.device,
                               dtype=self.settings.dtype, quantization=self.settings.quantization)
            self.add_model(model, config)

    def add_model(self, model: LoadedModel, config: SchedulerConfig) -> None:
        builder = ContextBuilder(model.encode, lambda ids, m=model: m.tokenizer.decode(ids, skip_special_tokens=False),
                                 _offsets_function(model.tokenizer), model.context_window,
                                 story_block_tokens=self.settings.story_trim_block_tokens)
        self.runtimes[model.name] = ModelRuntime(model, Scheduler(model, config), builder)

    async def warm_up(self) -> None:
        """One short generation per model, so the first request does not pay for lazy set-up."""
        for name in self.runtimes:
            if self.settings.warmup_tokens == 0:
                continue
            started = time.perf_counter()
            spec = GenerationSpec(model=name, prompt="Once upon a time",
                                  max_new_tokens=self.settings.warmup_tokens, seed=0)
            _, handle = await self.start(spec)
            async for _ in handle:
                pass
            log.info("model %s warm in %.2fs", name, time.perf_counter() - started)

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.scheduler.stop()
        self.preparation.shutdown()

    # --- requests ------------------------------------------------------------------------------

    def runtime(self, name: str, field: str = "spec.model") -> ModelRuntime:
        name = name or self.default_model
        if not self.runtimes:
            raise Unavailable("the models are still loading; retry shortly")
        if name not in self.runtimes:
            raise InvalidArgument(field, name, f"unknown model; served: {', '.join(self.runtimes)}")
        return self.runtimes[name]

    def prepare(self, spec: GenerationSpec, matching: KeyMatching | None = None) -> Prepared:
        """Validate and resolve a request, then tokenize or build its prompt. Cheap checks first;
        nothing here runs the model. `matching` bounds a story's lorebook key searches (by default
        the service's limits, with no deadline)."""
        preset = find(self.presets, spec.preset or self.settings.default_preset)
        params = GenerationParams.from_spec(spec, preset.sampling, self.limits)
        runtime = self.runtime(spec.model)
        model = runtime.model
        params.check_against_vocab(model.vocab_size)
        built: BuiltContext | None = None
        if spec.context is not None:
            story = check_inputs(spec.context, self.limits.max_prompt_chars, "spec.context.", self.lorebook_limits)
            built = runtime.builder.build(story, params.max_new_tokens,
                                          matching or KeyMatching(self.lorebook_limits))
            prompt_ids = built.prompt_ids
        else:
            prompt = spec.prompt
            if len(prompt) > self.limits.max_prompt_chars:
                raise InvalidArgument("spec.prompt", prompt, f"at most {self.limits.max_prompt_chars} characters")
            prompt_ids = model.encode(prompt)
            if len(prompt_ids) >= model.context_window:
                raise InvalidArgument("spec.prompt", f"{len(prompt_ids)} tokens",
                                      f"longer than the model's context window ({model.context_window} tokens, "
                                      "one at least kept for the continuation); send a StoryContext to have it trimmed")
        if not prompt_ids:
            bos = model.tokenizer.bos_token_id
            if bos is None:
                raise InvalidArgument("spec.prompt", "", "must not be empty for this model (it has no start token)")
            prompt_ids = [bos]
        uncond_ids: list[int] = []
        if params.sampling.uses_guidance:
            uncond_ids = self._negative_context(model, params.sampling.cfg_uc, prompt_ids)
        return Prepared(runtime, GenerationRequest(prompt_ids=prompt_ids, params=params, uncond_ids=uncond_ids),
                        built)

    @staticmethod
    def _negative_context(model: LoadedModel, text: str, prompt_ids: list[int]) -> list[int]:
        """The tokens classifier-free guidance's second row starts from: `cfg_uc`, or, when it is
        empty, the start token (NovelAI's empty negative context), else the prompt's last token
        (transformers' unconditional default for a model without one)."""
        ids = model.encode(text) if text else []
        if len(ids) >= model.context_window:
            raise InvalidArgument("spec.sampling.cfg_uc", f"{len(ids)} tokens",
                                  f"longer than the model's context window ({model.context_window} tokens)")
        if not ids:
            bos = model.tokenizer.bos_token_id
            ids = [bos] if bos is not None else prompt_ids[-1:]
        return ids

    async def start(self, spec: GenerationSpec, owner: str = "", deadline: float | None = None,
                    ) -> tuple[Prepared, GenerationHandle]:
        """Queue `owner`'s generation. Its place is held before the prompt is built (that costs
        CPU: tokenizing, a story's lorebook), so a request the queue or the owner's cap has no
        room for is refused before any of that work. The prompt is built on the bounded
        preparation pool, its key searches stopped by `deadline` (a `time.monotonic()` value) or
        by the caller leaving."""
        scheduler = self.runtime(spec.model).scheduler
        with scheduler.reserve(owner) as place:
            matching = KeyMatching(self.lorebook_limits, deadline)
            try:
                prepared = await self.preparation.run(owner, self.prepare, spec, matching)
            except asyncio.CancelledError:
                matching.cancel()
                raise
            return prepared, scheduler.submit_reserved(place, prepared.request)

    # --- tokens --------------------------------------------------------------------------------

    def tokenize(self, model_name: str, text: str) -> tuple[list[int], list[str]]:
        model = self.runtime(model_name, "model").model
        if len(text) > self.limits.max_prompt_chars:
            raise InvalidArgument("text", text, f"at most {self.limits.max_prompt_chars} characters")
        ids = model.encode(text)
        return ids, [model.decode([token]) for token in ids]

    def detokenize(self, model_name: str, token_ids: list[int]) -> str:
        model = self.runtime(model_name, "model").model
        if len(token_ids) > MAX_DETOKENIZE_IDS:
            raise InvalidArgument("token_ids", len(token_ids), f"at most {MAX_DETOKENIZE_IDS} ids")
        for index, token in enumerate(token_ids):
            if token >= model.vocab_size:
                raise InvalidArgument(f"token_ids[{index}]", token,
                                      f"must be below the vocabulary size {model.vocab_size}")
        return model.decode(token_ids)

    def count_tokens(self, model_name: str, texts: list[str]) -> list[int]:
        model = self.runtime(model_name, "model").model
        if len(texts) > MAX_COUNT_TEXTS:
            raise InvalidArgument("texts", len(texts), f"at most {MAX_COUNT_TEXTS} texts")
        for index, text in enumerate(texts):
            if len(text) > self.limits.max_prompt_chars:
                raise InvalidArgument(f"texts[{index}]", text, f"at most {self.limits.max_prompt_chars} characters")
        return [len(model.encode(text)) for text in texts]

    def apply_chat_template(self, model_name: str, messages: list[tuple[str, str]]) -> str:
        """The prompt for a conversation of (role, content) turns, rendered by the model's own chat
        template and ending where the assistant's reply begins."""
        model = self.runtime(model_name, "model").model
        if not messages:
            raise InvalidArgument("messages", "[]", "must hold at least one message")
        total = 0
        for index, (role, content) in enumerate(messages):
            if not role:
                raise InvalidArgument(f"messages[{index}].role", role, "must not be empty")
            total += len(role) + len(content)
        if total > self.limits.max_prompt_chars:
            raise InvalidArgument("messages", f"{total} characters",
                                  f"at most {self.limits.max_prompt_chars} characters in all")
        template = getattr(model.tokenizer, "chat_template", None)
        if not template:
            raise FailedPrecondition(f"model: {model.name} has no chat template; use a completion "
                                     "(a ready prompt) instead", field="model")
        turns = [{"role": role, "content": content} for role, content in messages]
        try:
            return model.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except TemplateError as error:  # the template itself refuses the conversation (e.g. role order)
            raise InvalidArgument("messages", f"{len(messages)} messages",
                                  f"refused by the model's chat template: {error}") from None

    def list_presets(self) -> list[Preset]:
        return sorted(self.presets.values(), key=lambda preset: preset.name)
