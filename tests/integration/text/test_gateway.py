"""The HTTP routes /ai/*: the real gateway (uvicorn) in front of the real editor (auth) and the
text service on a tiny model, all in-process on free ports."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import pytest

from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import events_of, gateway_settings, register_user, serve_gateway


@asynccontextmanager
async def stack(tmp_path, text_service, models, gateway_overrides=None, **text_options):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            text_service(models, **text_options) as text:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}",
                                    **(gateway_overrides or {}))
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            user = await register_user(client, "writer")
            client.headers.update(user.headers)
            yield client, text


@pytest.fixture
async def ai(tmp_path, text_service, tiny_model):
    async with stack(tmp_path, text_service, [tiny_model]) as running:
        yield running


BODY = {"prompt": "The knight", "max_new_tokens": 20, "min_new_tokens": 20, "seed": 9, "preset": "neutral"}


async def test_generate_and_stream_agree(ai):
    client, _ = ai
    reply = await client.post("/ai/generate", json=BODY)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["stats"]["finish_reason"] == "length"
    assert result["stats"]["usage"]["completion_tokens"] == 20 and result["stats"]["seed"] == 9
    streamed = await client.post("/ai/generate-stream", json=BODY)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = events_of(streamed.text)
    assert [kind for kind, _ in events][-1] == "final"
    assert {kind for kind, _ in events[:-1]} == {"piece"}
    assert "".join(data["text"] for _, data in events[:-1]) == result["text"]
    assert [t for _, data in events[:-1] for t in data["token_ids"]] == result["token_ids"]
    assert events[-1][1]["usage"] == result["stats"]["usage"]


async def test_token_probabilities_over_http(ai):
    client, _ = ai
    body = {**BODY, "top_probabilities": 2}
    result = (await client.post("/ai/generate", json=body)).json()
    events = events_of((await client.post("/ai/generate-stream", json=body)).text)
    streamed = [probs for kind, data in events if kind == "piece" for probs in data["probabilities"]]
    assert streamed == result["probabilities"]
    assert [probs["token_id"] for probs in streamed] == result["token_ids"]
    assert all(len(probs["before"]) == 2 and probs["before"][0]["logprob"] <= 0 for probs in streamed)
    assert "probabilities" not in events_of((await client.post("/ai/generate-stream", json=BODY)).text)[0][1]
    refused = await client.post("/ai/generate", json={**BODY, "top_probabilities": 21})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "top_probabilities"


async def test_story_context_event_and_report(ai):
    client, _ = ai
    body = {"context": {"story": "A dragon slept.", "memory": "Ada is brave.",
                        "lorebook": [{"name": "dragon", "text": "Dragons hoard gold.", "keys": ["dragon"]}]},
            "max_new_tokens": 4, "seed": 1}
    events = events_of((await client.post("/ai/generate-stream", json=body)).text)
    kind, report = events[0]
    assert kind == "context" and "Dragons hoard gold." in report["prompt"]
    result = (await client.post("/ai/generate", json=body)).json()
    assert result["context_report"]["prompt"] == report["prompt"]


async def test_story_context_settings_over_http(ai):
    client, _ = ai
    context = {
        "story": "Line one.\nThe knight saw the castle.\nLine three.",
        "memory": "Ada is the knight.", "memory_config": {"prefix": "[ ", "suffix": " ]"},
        "story_config": {"trim_direction": "none", "maximum_trim_type": "token"},
        "lorebook": [
            {"name": "Castle", "text": "The castle has a moat.", "keys": ["castle"], "key_relative": True,
             "context_config": {"insertion_position": 0, "insertion_type": "newline"}},
            {"name": "Moat", "text": "Eels live in the moat.", "keys": ["moat"], "cascading_activation": True,
             "category": "places"},
            {"name": "Hidden", "text": "Never shown.", "always_on": True, "category": "secrets"},
        ],
        "lorebook_categories": [
            {"id": "places", "name": "Places", "create_subcontext": True, "subcontext_config": {"prefix": "--- "}},
            {"id": "secrets", "enabled": False},
        ],
    }
    reply = await client.post("/ai/generate", json={"context": context, "max_new_tokens": 2, "seed": 1})
    assert reply.status_code == 200, reply.text
    report = reply.json()["context_report"]
    assert report["prompt"] == ("[ Ada is the knight. ]\n--- Eels live in the moat.\nLine one.\n"
                                "The knight saw the castle.\nThe castle has a moat.\nLine three.")
    assert {row["source"]: row["reason"] for row in report["entries"]} == {
        "memory": "included whole", "authors_note": "empty", "story": "included whole",
        "lorebook:Castle": "key 'castle' matched", "lorebook:Moat": "cascade from entry 'Castle'",
        "lorebook:Hidden": "category disabled", "subcontext:Places": "1 activated entry of category 'Places'"}


@pytest.mark.parametrize(("context", "field"), [
    ({"story": "x", "story_config": {"trim_direction": "sideways"}}, "context.story_config.trim_direction"),
    ({"story": "x", "lorebook": [{"text": "t", "keys": ["k"], "category": "nope"}]}, "context.lorebook[0].category"),
    # Hundreds of entries of dozens of catastrophically backtracking keys: over the request's
    # budget of keys, refused before any of them is compiled or searched.
    ({"story": "a" * 60 + "!", "lorebook": [{"text": "t", "keys": [f"(a|aa)+(?#{j})$" for j in range(30)],
                                             "regex_keys": True}] * 300}, "context.lorebook"),
])
async def test_bad_story_context_settings_name_the_field_over_http(ai, context, field):
    client, _ = ai
    reply = await client.post("/ai/generate", json={"context": context, "max_new_tokens": 2})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["field"] == field


async def test_tokenize_models_presets(ai):
    client, _ = ai
    tokens = (await client.post("/ai/tokenize", json={"text": "The dragon"})).json()
    assert len(tokens["token_ids"]) == len(tokens["token_texts"]) > 0
    models = (await client.get("/ai/models")).json()
    assert models[0]["name"] == "tiny" and models[0]["is_default"]
    presets = {p["name"]: p for p in (await client.get("/ai/presets")).json()}
    assert presets["greedy"]["sampling"]["temperature"] == 0


async def test_sampler_convention_reaches_the_service(ai):
    client, _ = ai
    # Tail-free sampling keeps one token fewer under KOBOLDCPP at every step, so the same seed
    # soon draws differently.
    sampling = {"tail_free": 0.5}
    texts = {}
    for convention in (None, "fabula", "koboldcpp"):
        chosen = sampling if convention is None else {**sampling, "sampler_convention": convention}
        reply = await client.post("/ai/generate", json={**BODY, "sampling": chosen})
        assert reply.status_code == 200, reply.text
        texts[convention] = reply.json()["token_ids"]
    assert texts[None] == texts["fabula"] != texts["koboldcpp"]


async def test_login_is_required(ai):
    client, _ = ai
    for method, path in (("post", "/ai/generate"), ("post", "/ai/generate-stream"), ("post", "/ai/tokenize"),
                         ("get", "/ai/models")):
        reply = await client.request(method.upper(), path, json=BODY, headers={"Authorization": ""})
        assert reply.status_code == 401, (path, reply.text)


@pytest.mark.parametrize(("body", "field"), [
    ({**BODY, "max_new_tokens": -1}, "max_new_tokens"),
    ({**BODY, "max_new_tokens": 0}, "max_new_tokens"),
    ({**BODY, "sampling": {"temperature": float("nan")}}, "sampling.temperature"),
    ({**BODY, "sampling": {"top_k": "ten"}}, "sampling.top_k"),
    ({**BODY, "model": "gpt-17"}, "model"),
    ({**BODY, "prompt": "a" * 1_000_000}, "prompt"),
    ({**BODY, "sampling": {"sampler_order": [{"sampler": "top_k"}, {"sampler": "top_p"}]}},
     "sampling.sampler_order"),
    ({**BODY, "sampling": {"sampler_convention": "llamacpp"}}, "sampling.sampler_convention"),
    ({**BODY, "context": {"story": "x"}}, None),
])
async def test_hostile_bodies_are_400_naming_the_field(ai, body, field):
    client, _ = ai
    for path in ("/ai/generate", "/ai/generate-stream"):
        reply = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert reply.status_code == 400, (path, reply.text)
        error = reply.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT"
        if field:
            assert error["field"] == field, error


async def test_full_queue_is_429_with_retry_after(tmp_path, text_service, tiny_long_model):
    from fabula.text.v1 import text_pb2

    async with stack(tmp_path, text_service, [tiny_long_model], max_batch_size=1, max_queue=0) as (client, text):
        # Keep the one slot busy for longer than the test takes, then cancel.
        busy = text.stub.GenerateStream(text_pb2.GenerateStreamRequest(spec=text_pb2.GenerationSpec(
            prompt="x", max_new_tokens=1024, min_new_tokens=1024, seed=1)))
        async for message in busy:
            if message.WhichOneof("event") == "piece":
                break
        reply = await client.post("/ai/generate", json=BODY)
        busy.cancel()
        assert reply.status_code == 429, reply.text
        assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert int(reply.headers["Retry-After"]) >= 1


async def test_disconnecting_stops_the_generation(tmp_path, text_service, tiny_model):
    async with stack(tmp_path, text_service, [tiny_model], max_batch_size=2) as (client, text):
        scheduler = text.scheduler()
        long = {**BODY, "max_new_tokens": 400, "min_new_tokens": 400}
        async with client.stream("POST", "/ai/generate-stream", json=long) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("event: piece"):
                    break
            assert scheduler.active == 1
        for _ in range(1000):
            if scheduler.active == 0:
                break
            await asyncio.sleep(0.01)
        assert scheduler.active == 0


async def test_deadline_mid_stream_is_an_error_event(tmp_path, text_service, tiny_long_model):
    # A long context window and many tokens, so the stream is still going when the deadline comes.
    async with stack(tmp_path, text_service, [tiny_long_model], gateway_overrides={"stream_timeout_s": 0.5},
                     max_new_tokens=12000) as (client, _):
        long = {**BODY, "max_new_tokens": 12000, "min_new_tokens": 12000, "prompt": "x"}
        events = events_of((await client.post("/ai/generate-stream", json=long)).text)
        assert events[-1][0] == "error"
        assert events[-1][1]["error"]["code"] == "DEADLINE_EXCEEDED"
        assert any(kind == "piece" for kind, _ in events)
