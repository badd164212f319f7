"""The text service's own Prometheus metrics (the toolkit adds per-RPC outcomes and durations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.text.sequence import Stats

QUEUE_DEPTH = Gauge("fabula_text_queue_depth", "Requests waiting for a batch slot", ["model"])
QUEUE_SECONDS = Histogram(
    "fabula_text_queue_seconds", "Time a request waited before its prompt was processed", ["model"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram(
    "fabula_text_batch_size", "Sequences sharing one decode step", ["model"],
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64))
TIME_TO_FIRST_TOKEN = Histogram(
    "fabula_text_time_to_first_token_seconds", "From arrival to the first generated token", ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
GENERATED_TOKENS = Counter("fabula_text_generated_tokens_total", "Tokens generated", ["model"])
TOKENS_PER_SECOND = Histogram(
    "fabula_text_tokens_per_second", "Per-request decode speed (tokens/s after the first token)", ["model"],
    buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640, 1280))
GENERATIONS = Counter("fabula_text_generations_total", "Generations finished, by finish reason",
                      ["model", "finish_reason"])
PROMPT_TOKENS = Counter("fabula_text_prompt_tokens_total", "Prompt tokens of the requests processed", ["model"])
PREFIX_CACHED_TOKENS = Counter(
    "fabula_text_prefix_cached_tokens_total",
    "Prompt tokens served from the prefix cache (hit rate = this / fabula_text_prompt_tokens_total)", ["model"])
PREFIX_CACHE_BYTES = Gauge("fabula_text_prefix_cache_bytes", "Memory held by the prefix cache", ["model"])
PREFIX_CACHE_BLOCKS = Gauge("fabula_text_prefix_cache_blocks", "Blocks held by the prefix cache", ["model"])
REJECTED = Counter("fabula_text_rejected_total", "Requests refused because the queue was full", ["model"])


def record_finish(model: str, stats: Stats) -> None:
    GENERATIONS.labels(model, stats.finish_reason.name.lower()).inc()
    if stats.tokens_per_second > 0:
        TOKENS_PER_SECOND.labels(model).observe(stats.tokens_per_second)
