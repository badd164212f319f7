"""Text generation through the gateway's /ai routes: complete answers, or the continuation as it
is written (Server-Sent Events), plus tokenizing and listing models and presets.

    with TextClient("http://127.0.0.1:8000", token) as ai:
        for event in ai.stream(prompt="Once upon a time", max_new_tokens=60, seed=1):
            if isinstance(event, TextPiece):
                print(event.text, end="", flush=True)

Generation options are the gateway's JSON body fields (see its OpenAPI page, /docs): `sampling`
(a dict: temperature, top_k, top_p, top_a, typical_p, tail_free, min_p, repetition_penalty...,
mirostat, mirostat_tau, mirostat_eta, cfg_scale, cfg_uc, phrase_repetition_penalty, unified_linear,
unified_quad, unified_conf, dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n,
dry_sequence_breakers, xtc_threshold, xtc_probability, sampler_order), `preset`, `max_new_tokens`,
`min_new_tokens`, `stop_sequences`, `banned_strings`,
`logit_bias`, `phrase_bias`, `seed`, and `prompt` or `context` (story, memory, authors_note,
lorebook, ...). Failures raise the SDK's `ApiError` subclasses, also when they arrive mid-stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.ai_http import AiHttpClient


@dataclass(frozen=True)
class TextPiece:
    """New text of a streamed continuation, with the tokens it came from (and, when asked for with
    `top_probabilities`, one entry per token: token_id, logprob_before, logprob_after, and the
    `before` / `after` alternatives as token_id, text, logprob; a logprob is None where the token
    could not be drawn)."""

    text: str
    token_ids: list[int]
    probabilities: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationStats:
    finish_reason: str  # "length", "stop_sequence", "end_of_text" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    seed: int
    model: str
    time_to_first_token_ms: float
    total_ms: float
    tokens_per_second: float
    stop_sequence: str = ""
    cached_prompt_tokens: int = 0  # prompt tokens whose processing the service's prefix cache saved

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GenerationStats:
        return cls(finish_reason=body["finish_reason"], prompt_tokens=body["usage"]["prompt_tokens"],
                   completion_tokens=body["usage"]["completion_tokens"], seed=body["seed"], model=body["model"],
                   time_to_first_token_ms=body["time_to_first_token_ms"], total_ms=body["total_ms"],
                   tokens_per_second=body["tokens_per_second"], stop_sequence=body.get("stop_sequence", ""),
                   cached_prompt_tokens=body["usage"].get("cached_prompt_tokens", 0))


@dataclass(frozen=True)
class ContextReport:
    """What the context builder put in the prompt, and why (entries: source, included, reason,
    tokens, trimmed_tokens)."""

    prompt: str
    prompt_tokens: int
    budget_tokens: int
    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ContextReport:
        return cls(prompt=body["prompt"], prompt_tokens=body["prompt_tokens"], budget_tokens=body["budget_tokens"],
                   entries=list(body["entries"]))


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    stats: GenerationStats
    context_report: ContextReport | None = None
    probabilities: list[dict[str, Any]] = field(default_factory=list)  # as in TextPiece


StreamEvent = TextPiece | GenerationStats | ContextReport


class TextClient(AiHttpClient):
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return self._request(method, path, body).json()

    def generate(self, **options: Any) -> Generation:
        """The whole continuation at once."""
        body = self._call("POST", "/ai/generate", options)
        report = body.get("context_report")
        return Generation(text=body["text"], token_ids=list(body["token_ids"]),
                          stats=GenerationStats.from_json(body["stats"]),
                          context_report=ContextReport.from_json(report) if report else None,
                          probabilities=list(body.get("probabilities", [])))

    def stream(self, **options: Any) -> Iterator[StreamEvent]:
        """The continuation as it is written: a ContextReport first (for story contexts), then
        TextPieces, then GenerationStats. Stopping the iteration closes the connection, which
        stops the generation on the server."""
        for kind, body in self._events("/ai/generate-stream", options):
            if kind == "piece":
                yield TextPiece(body["text"], list(body["token_ids"]), list(body.get("probabilities", [])))
            elif kind == "context":
                yield ContextReport.from_json(body)
            elif kind == "final":
                yield GenerationStats.from_json(body)
                return

    def tokenize(self, text: str, model: str = "") -> tuple[list[int], list[str]]:
        body = self._call("POST", "/ai/tokenize", {"text": text, "model": model})
        return list(body["token_ids"]), list(body["token_texts"])

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/ai/models"))

    def presets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/ai/presets"))
