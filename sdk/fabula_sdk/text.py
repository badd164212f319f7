"""Text generation through the gateway's /ai routes: complete answers, or the continuation as it
is written (Server-Sent Events), plus tokenizing and listing models and presets.

    with TextClient("http://127.0.0.1:8000", token) as ai:
        for event in ai.stream(prompt="Once upon a time", max_new_tokens=60, seed=1):
            if isinstance(event, TextPiece):
                print(event.text, end="", flush=True)

Generation options are the gateway's JSON body fields (see its OpenAPI page, /docs): `sampling`
(a dict: temperature, top_k, top_p, top_a, typical_p, tail_free, min_p, repetition_penalty...,
sampler_order), `preset`, `max_new_tokens`, `min_new_tokens`, `stop_sequences`, `banned_strings`,
`logit_bias`, `phrase_bias`, `seed`, and `prompt` or `context` (story, memory, authors_note,
lorebook, ...). Failures raise the SDK's `ApiError` subclasses, also when they arrive mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from fabula_sdk.errors import TransportError, api_error
from fabula_sdk.http_transport import DEFAULT_URL, error_from_response


@dataclass(frozen=True)
class TextPiece:
    """New text of a streamed continuation, with the tokens it came from."""

    text: str
    token_ids: list[int]


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

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GenerationStats:
        return cls(finish_reason=body["finish_reason"], prompt_tokens=body["usage"]["prompt_tokens"],
                   completion_tokens=body["usage"]["completion_tokens"], seed=body["seed"], model=body["model"],
                   time_to_first_token_ms=body["time_to_first_token_ms"], total_ms=body["total_ms"],
                   tokens_per_second=body["tokens_per_second"], stop_sequence=body.get("stop_sequence", ""))


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


StreamEvent = TextPiece | GenerationStats | ContextReport


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from Server-Sent Event lines."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield kind, "\n".join(data)


class TextClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = 600.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers, transport=transport)

    def __enter__(self) -> TextClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as error:
            raise TransportError(f"cannot reach {self._http.base_url}: {error}") from error
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    def generate(self, **options: Any) -> Generation:
        """The whole continuation at once."""
        body = self._call("POST", "/ai/generate", options)
        report = body.get("context_report")
        return Generation(text=body["text"], token_ids=list(body["token_ids"]),
                          stats=GenerationStats.from_json(body["stats"]),
                          context_report=ContextReport.from_json(report) if report else None)

    def stream(self, **options: Any) -> Iterator[StreamEvent]:
        """The continuation as it is written: a ContextReport first (for story contexts), then
        TextPieces, then GenerationStats. Stopping the iteration closes the connection, which
        stops the generation on the server."""
        try:
            with self._http.stream("POST", "/ai/generate-stream", json=options) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                for kind, data in _sse_events(response.iter_lines()):
                    body = json.loads(data)
                    if kind == "piece":
                        yield TextPiece(body["text"], list(body["token_ids"]))
                    elif kind == "context":
                        yield ContextReport.from_json(body)
                    elif kind == "final":
                        yield GenerationStats.from_json(body)
                        return
                    elif kind == "error":
                        error = body["error"]
                        raise api_error(_status_of(error["code"]), error["code"], error["message"], error.get("field"))
        except httpx.HTTPError as error:
            raise TransportError(f"stream from {self._http.base_url} failed: {error}") from error

    def tokenize(self, text: str, model: str = "") -> tuple[list[int], list[str]]:
        body = self._call("POST", "/ai/tokenize", {"text": text, "model": model})
        return list(body["token_ids"]), list(body["token_texts"])

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/ai/models"))

    def presets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/ai/presets"))


_STATUS_BY_CODE = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def _status_of(code: str) -> int:
    """An error event carries the gateway's code only; map it back to the HTTP status it stands for."""
    return _STATUS_BY_CODE.get(code, 500)
