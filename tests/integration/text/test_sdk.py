"""The SDK's TextClient and `fabula generate` against the real gateway and text service."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from typer.testing import CliRunner

from fabula_sdk.cli import app
from fabula_sdk.errors import InvalidRequestError
from fabula_sdk.session_store import SavedSession, SessionStore
from fabula_sdk.text import ContextReport, GenerationStats, TextClient, TextPiece
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway


@pytest.fixture
async def live(tmp_path, text_service, tiny_model):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            text_service([tiny_model]) as text:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}")
        async with serve_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
            user = await register_user(client, "sdkwriter")
            yield gateway.url, user


OPTIONS = dict(prompt="The knight", max_new_tokens=15, min_new_tokens=15, seed=4, preset="neutral")


async def test_text_client_generate_and_stream(live):
    url, user = live

    def run():
        with TextClient(url, user.token) as ai:
            whole = ai.generate(**OPTIONS)
            events = list(ai.stream(**OPTIONS))
            context_events = list(ai.stream(context={"story": "A dragon slept."}, max_new_tokens=3, seed=1))
            try:
                ai.generate(**{**OPTIONS, "sampling": {"top_p": 7}})
            except InvalidRequestError as error:
                refused = error
            return whole, events, context_events, refused, ai.models(), ai.tokenize("The dragon")

    whole, events, context_events, refused, models, (ids, texts) = await asyncio.to_thread(run)
    pieces = [e for e in events if isinstance(e, TextPiece)]
    assert "".join(p.text for p in pieces) == whole.text
    assert isinstance(events[-1], GenerationStats) and events[-1].completion_tokens == 15
    assert isinstance(context_events[0], ContextReport) and context_events[0].prompt == "A dragon slept."
    assert refused.field == "sampling.top_p" and refused.status == 400
    assert models[0]["name"] == "tiny"
    assert len(ids) == len(texts) > 0


async def test_cli_generate_streams_to_the_terminal(live, tmp_path):
    url, user = live
    home = tmp_path / "home"
    SessionStore(home).save(SavedSession(url=url, username=user.username, user_id=user.user_id, token=user.token,
                                         master_key=os.urandom(32)))

    def run(*args):
        return CliRunner().invoke(app, ["--home", str(home), "generate", *args])

    result = await asyncio.to_thread(run, "The knight", "-n", "15", "--min-new-tokens", "15", "--seed", "4",
                                     "--preset", "neutral")
    assert result.exit_code == 0, result.output

    def expected():
        with TextClient(url, user.token) as ai:
            return ai.generate(**OPTIONS).text

    assert (await asyncio.to_thread(expected)) in result.stdout
    assert "length; 15 tokens" in result.stderr
    with_probs = await asyncio.to_thread(run, "The knight", "-n", "15", "--min-new-tokens", "15", "--seed", "4",
                                         "--preset", "neutral", "--probs", "3")
    assert with_probs.exit_code == 0, with_probs.output
    assert with_probs.stdout == result.stdout
    lines = [line for line in with_probs.stderr.splitlines() if "| before:" in line]
    assert len(lines) == 15 and all(line.count("%") >= 2 + 3 for line in lines)
    bad = await asyncio.to_thread(run, "x", "--temperature", "-1")
    assert bad.exit_code == 1 and "temperature" in bad.stderr


async def test_cli_newer_sampler_options_reach_the_service(live, tmp_path):
    url, user = live
    home = tmp_path / "home"
    SessionStore(home).save(SavedSession(url=url, username=user.username, user_id=user.user_id, token=user.token,
                                         master_key=os.urandom(32)))

    def run(*args):
        return CliRunner().invoke(app, ["--home", str(home), "generate", *args])

    flags = ["--mirostat", "2", "--mirostat-tau", "3", "--cfg-scale", "1.5", "--negative", "A dull report.",
             "--phrase-rep-pen", "light", "--dry-multiplier", "0.8", "--xtc-probability", "0.5",
             "--unified-linear", "0.9"]
    result = await asyncio.to_thread(run, "The knight", "-n", "15", "--min-new-tokens", "15", "--seed", "4",
                                     "--preset", "neutral", *flags)
    assert result.exit_code == 0, result.output
    sampling = {"mirostat": 2, "mirostat_tau": 3.0, "cfg_scale": 1.5, "cfg_uc": "A dull report.",
                "phrase_repetition_penalty": "light", "dry_multiplier": 0.8, "xtc_probability": 0.5,
                "unified_linear": 0.9}

    def expected():
        with TextClient(url, user.token) as ai:
            return ai.generate(**OPTIONS, sampling=sampling).text, ai.generate(**OPTIONS).text

    guided, plain = await asyncio.to_thread(expected)
    assert guided in result.stdout and guided != plain
    bad = await asyncio.to_thread(run, "x", "--phrase-rep-pen", "loud")
    assert bad.exit_code == 1 and "phrase_repetition_penalty" in bad.stderr
