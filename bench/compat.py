"""Streaming through the OpenAI-compatible API against streaming through Fabula's own route, on
the full stack (editor, text service with the default model, gateway: three processes).

The same requests go both ways, in alternating pairs so that the machine's noise falls on both
alike: a prompt, `ROUNDS` times, 64 new tokens forced (end of text suppressed, so every request
writes exactly as many), seed fixed, the neutral preset. Each side's tokens/s is the tokens
received over the wall time from sending the request to the stream's end, as a client sees it.

- `ratios.openai_stream_vs_native` = tokens/s through /v1/completions (stream) ÷ tokens/s through
  /ai/generate-stream; 1.0 means the translation costs nothing a client can see.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.processes import free_port, running_processes

ROUNDS = 4
NEW_TOKENS = 64
PROMPT = "The keeper climbed the stairs to the lamp room, and"
START_TIMEOUT_S = 300.0


@contextmanager
def _stack(workdir: Path) -> Iterator[str]:
    editor_port, text_port, gateway_port = free_port(), free_port(), free_port()
    env = {
        "FABULA_EDITOR_PORT": str(editor_port), "FABULA_EDITOR_METRICS_PORT": "0",
        "FABULA_EDITOR_DATABASE_URL": f"sqlite:///{workdir / 'editor.db'}",
        "FABULA_EDITOR_AUTH_HASH_OPSLIMIT": "1", "FABULA_EDITOR_AUTH_HASH_MEMLIMIT": "8192",
        # The bench's user signs up at the cheapest Argon2id cost, below the production floor.
        "FABULA_EDITOR_MIN_KDF_OPSLIMIT": "1", "FABULA_EDITOR_MIN_KDF_MEMLIMIT": "8192",
        "FABULA_EDITOR_LOG_LEVEL": "WARNING",
        "FABULA_TEXT_PORT": str(text_port), "FABULA_TEXT_METRICS_PORT": "0", "FABULA_TEXT_LOG_LEVEL": "WARNING",
        "FABULA_GATEWAY_PORT": str(gateway_port), "FABULA_GATEWAY_EDITOR_ADDRESS": f"127.0.0.1:{editor_port}",
        "FABULA_GATEWAY_TEXT_ADDRESS": f"127.0.0.1:{text_port}", "FABULA_GATEWAY_LOG_LEVEL": "WARNING",
        "FABULA_GATEWAY_RATE_LIMIT": "10000000/minute", "FABULA_GATEWAY_ANONYMOUS_RATE_LIMIT": "10000000/minute",
    }
    url = f"http://127.0.0.1:{gateway_port}"

    def serving() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    with running_processes(["services.editor", "services.text", "gateway"], env, workdir / "stack.log", serving,
                           START_TIMEOUT_S):
        yield url


def _api_token(client: httpx.Client) -> str:
    registered = client.post("/user/register", json={
        "username": "bench", "salt": base64.b64encode(os.urandom(16)).decode(),
        "kdf": {"opslimit": 1, "memlimit": 8192}, "auth_key": base64.b64encode(os.urandom(32)).decode(),
        "keystore": base64.b64encode(os.urandom(120)).decode()})
    registered.raise_for_status()
    session = {"Authorization": f"Bearer {registered.json()['token']}"}
    created = client.post("/user/tokens", json={"name": "bench"}, headers=session)
    created.raise_for_status()
    return created.json()["token"]


def _wait_for_text_service(client: httpx.Client) -> None:
    """/health answers once the editor serves; the text service loads its model for a while longer."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while client.post("/ai/generate", json={"prompt": "Hi", "max_new_tokens": 1}).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the text service did not serve within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.5)


def _native(client: httpx.Client, seed: int) -> tuple[int, float]:
    body = {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "seed": seed,
            "preset": "neutral"}
    tokens = 0
    started = time.perf_counter()
    with client.stream("POST", "/ai/generate-stream", json=body) as reply:
        reply.raise_for_status()
        kind = ""
        for line in reply.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "piece":
                tokens += len(json.loads(line[5:])["token_ids"])
    return tokens, time.perf_counter() - started


def _openai(client: httpx.Client, seed: int) -> tuple[int, float]:
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    tokens = 0
    started = time.perf_counter()
    with client.stream("POST", "/v1/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                usage = json.loads(line[5:]).get("usage")
                if usage:
                    tokens = usage["completion_tokens"]
    return tokens, time.perf_counter() - started


def run() -> dict:
    with tempfile.TemporaryDirectory() as workdir, _stack(Path(workdir)) as url, \
            httpx.Client(base_url=url, timeout=300.0) as client:
        client.headers["Authorization"] = f"Bearer {_api_token(client)}"
        _wait_for_text_service(client)
        print("   the text service serves; measuring", flush=True)
        _native(client, 0)  # warm both paths (first requests pay one-time costs)
        _openai(client, 0)
        native_rates, openai_rates = [], []
        for round_ in range(ROUNDS):
            # Alternate which goes first, so neither always follows the other.
            order = (_native, _openai) if round_ % 2 == 0 else (_openai, _native)
            for side in order:
                tokens, seconds = side(client, round_ + 1)
                if tokens != NEW_TOKENS:
                    raise RuntimeError(f"{side.__name__} streamed {tokens} tokens, expected {NEW_TOKENS}")
                (native_rates if side is _native else openai_rates).append(tokens / seconds)
                print(f"   round {round_ + 1} {side.__name__.strip('_')}: {tokens / seconds:.1f} tokens/s", flush=True)
    native = statistics.median(native_rates)
    openai = statistics.median(openai_rates)
    return {
        "figures": {"native_stream_tokens_per_s": native, "openai_stream_tokens_per_s": openai,
                    "rounds": ROUNDS, "new_tokens": NEW_TOKENS},
        "ratios": {"openai_stream_vs_native": openai / native},
        "summary": (f"{ROUNDS} alternating pairs of the same streamed request ({NEW_TOKENS} new tokens forced, "
                    "same seed per pair, neutral preset) with an API token on the full stack (editor, text service "
                    "with the default model, gateway; three processes on one machine): through "
                    "`/ai/generate-stream` and through `/v1/completions` with `stream: true`. Tokens/s is tokens "
                    "received over the client's wall time per request; figures are medians."),
    }
