"""The text service's settings (env prefix FABULA_TEXT_, or CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.toolkit.settings import ServiceSettings


class TextSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FABULA_TEXT_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    models: dict[str, str] = Field(
        default_factory=lambda: {"smollm2": "builtin:smollm2"},
        description="name → source (a .gguf file, a Hugging Face folder, or builtin:<name>); "
                    'as JSON in the environment, e.g. {"smollm2": "builtin:smollm2"}')
    default_model: str = Field("", description="model used when a request names none; empty = the first")
    cache_dir: Path = Field(Path("~/.cache/fabula/text").expanduser(),
                            description="where GGUF files are converted to once")
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["auto", "int4-groupwise", "int8-dynamic", "int8-weight-only", "none"] = Field(
        "auto", description="quantised linears on CPU: 'auto' = int8-dynamic on x86 (fbgemm), int8-weight-only "
                            "elsewhere, none on GPUs; 'int4-groupwise' (x86): 4-bit groups of 32 (a Q4_1 GGUF's "
                            "own codes), faster for one stream, slower for batches and prompts")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per core")
    max_batch_size: int = Field(16, ge=1, le=256, description="sequences decoded together per model")
    max_queue: int = Field(64, ge=0, description="requests waiting beyond the batch; more get RESOURCE_EXHAUSTED")
    max_generations_per_user: int = Field(4, ge=1, description="one user's generations running or waiting at "
                                                               "once, per model; more get RESOURCE_EXHAUSTED")
    prefill_chunk_tokens: int = Field(512, ge=16, description="prompt tokens processed per scheduler step")
    prefix_cache_mb: int = Field(512, ge=0, description="memory per model for the keys and values of recent prompts, "
                                                     "reused by prompts that start the same way; 0 = off")
    prefix_block_tokens: int = Field(32, ge=1, le=4096, description="tokens per prefix-cache block (reuse is "
                                                                  "block by block)")
    story_trim_block_tokens: int = Field(
        128, ge=0, le=4096, description="a story too long for its budget is trimmed from the top in whole blocks of "
                                        "this many tokens, so continuations keep the same prompt prefix (prefix "
                                        "reuse); 0 = trim at the first unit start that fits")
    max_new_tokens: int = Field(1024, ge=1, description="the largest max_new_tokens a request may ask for")
    max_prompt_chars: int = Field(200_000, ge=1, description="longest prompt or story accepted, in characters")
    prepare_workers: int = Field(2, ge=1, description="threads that build prompts (tokenizing, matching lorebook "
                                                      "keys), for every model together")
    prepare_queue: int = Field(64, ge=0, description="requests waiting for one of those threads; more get "
                                                    "RESOURCE_EXHAUSTED")
    lorebook_max_keys: int = Field(8192, ge=0, description="lorebook keys of one request, all entries together")
    lorebook_max_key_chars: int = Field(262_144, ge=0, description="characters of those keys together")
    lorebook_max_regex_scan_chars: int = Field(
        200_000_000, ge=0, description="characters one request's regular-expression keys may scan together "
                                       "(each key × the text it searches)")
    lorebook_search_ms: float = Field(50.0, gt=0, description="CPU time one search of one key may take")
    lorebook_total_ms: float = Field(2000.0, gt=0, description="CPU time all of one request's key searches may "
                                                               "take together")
    default_preset: str = Field("balanced", description="preset used when a request names none")
    presets_dir: Path | None = Field(None, description="extra preset files (*.json), overriding shipped ones")
    warmup_tokens: int = Field(4, ge=0, description="tokens generated per model at start-up before SERVING")

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, models: dict[str, str]) -> dict[str, str]:
        if not models:
            raise ValueError("at least one model is needed")
        return models

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.models))
