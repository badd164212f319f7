"""NovelAI's text API under /novelai (/ai/generate, /ai/generate-stream) through the real gateway
onto the text service on the tiny model, with the body SillyTavern sends (raw HTTP)."""

from __future__ import annotations

import httpx
import pytest

from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import events_of, gateway_settings, register_user, serve_gateway


@pytest.fixture
async def novelai(tmp_path, text_service, tiny_model):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            text_service([tiny_model]) as text:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text.server.port}")
        async with serve_gateway(settings) as live, \
                httpx.AsyncClient(base_url=f"{live.url}/novelai", timeout=30) as client:
            async with httpx.AsyncClient(base_url=live.url) as plain:
                user = await register_user(plain, "novelist")
            client.headers.update(user.headers)
            yield client, live.url, user


# The body SillyTavern's src/endpoints/novelai.js (SillyTavern/SillyTavern) sends to NovelAI's
# /ai/generate and /ai/generate-stream, with the values of a Kayra preset; its stop sequences are
# token-id arrays (see the test below), here left empty.
def sillytavern_body(**changes) -> dict:
    parameters = {
        "use_string": True, "temperature": 1.0, "max_length": 12, "min_length": 12, "tail_free_sampling": 0.92,
        "repetition_penalty": 1.5, "repetition_penalty_range": 64, "repetition_penalty_slope": 0.1,
        "repetition_penalty_frequency": 0.0, "repetition_penalty_presence": 0.0,
        "repetition_penalty_whitelist": [[49256, 49264, 49231]], "top_a": 0.1, "top_p": 0.9, "top_k": 40,
        "typical_p": 1.0, "mirostat_lr": 1, "mirostat_tau": 0, "cfg_scale": 1, "cfg_uc": "", "phrase_rep_pen": "off",
        "stop_sequences": [], "bad_words_ids": [[3], [49356], [85, 85]],
        "logit_bias_exp": [{"sequence": [23], "bias": -0.08, "ensure_sequence_finish": False,
                            "generate_once": False}],
        "generate_until_sentence": True, "use_cache": False, "return_full_text": False, "prefix": "vanilla",
        "order": [1, 5, 0, 2, 3, 4],
    }
    parameters.update(changes)
    return {"input": "The knight rode into the valley.", "model": "kayra-v1", "parameters": parameters}


async def test_sillytavern_body_generates_and_streams_the_same_text(novelai) -> None:
    client, url, user = novelai
    reply = await client.post("/ai/generate", json=sillytavern_body(temperature=0.0001))
    assert reply.status_code == 200, reply.text
    output = reply.json()["output"]
    streamed = await client.post("/ai/generate-stream", json=sillytavern_body(temperature=0.0001))
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = events_of(streamed.text)
    assert {kind for kind, _ in events} == {"newToken"}
    tokens = [data for _, data in events]
    assert [t["ptr"] for t in tokens] == list(range(len(tokens)))
    assert [t["final"] for t in tokens] == [False] * (len(tokens) - 1) + [True]
    assert "".join(t["token"] for t in tokens) == output and output
    # The native route, same request: the same continuation (the translation adds nothing).
    native = await client.post(f"{url}/ai/generate", json={
        "prompt": "The knight rode into the valley.", "max_new_tokens": 12, "min_new_tokens": 12,
        "sampling": {"temperature": 0.0001, "top_k": 40, "top_p": 0.9, "top_a": 0.1, "typical_p": 1.0,
                     "tail_free": 0.92, "repetition_penalty": 1.5, "repetition_penalty_range": 64,
                     "repetition_penalty_slope": 0.1, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                     "sampler_order": [{"sampler": s, "enabled": True} for s in
                                       ("top_k", "typical_p", "temperature", "top_p", "tail_free", "top_a")]
                     + [{"sampler": "min_p", "enabled": False}]}})
    assert native.status_code == 200, native.text
    assert native.json()["text"] == output


async def test_stop_sequences_as_strings_stop_the_text(novelai) -> None:
    client, _, _ = novelai
    first = (await client.post("/ai/generate", json=sillytavern_body(temperature=0.0001, min_length=0))).json()
    stop = first["output"][2:4]
    reply = await client.post("/ai/generate", json=sillytavern_body(temperature=0.0001, min_length=0,
                                                                   stop_sequences=[stop]))
    assert reply.status_code == 200, reply.text
    cut = first["output"].index(stop)
    assert reply.json()["output"] in (first["output"][:cut], first["output"][:cut + len(stop)])


async def test_stop_sequences_as_token_ids_are_decoded_with_the_models_tokenizer(novelai) -> None:
    # SillyTavern tokenizes each stopping string and sends the id arrays (getNovelGenerationData:
    # `stop_sequences: stoppingStrings.map(t => getTextTokens(tokenizerType, t))`); a client that
    # tokenizes with the served model's tokenizer (/ai/tokenize) gets exactly its strings back.
    client, url, _ = novelai
    first = (await client.post("/ai/generate", json=sillytavern_body(temperature=0.0001, min_length=0))).json()
    stop = first["output"][2:5]
    ids = (await client.post(f"{url}/ai/tokenize", json={"text": stop})).json()["token_ids"]
    cut = first["output"][:first["output"].index(stop)]
    unrelated = (await client.post(f"{url}/ai/tokenize", json={"text": "zqxj"})).json()["token_ids"]
    body = sillytavern_body(temperature=0.0001, min_length=0, stop_sequences=[unrelated, ids])
    reply = await client.post("/ai/generate", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"] == cut
    streamed = await client.post("/ai/generate-stream", json=body)
    assert streamed.status_code == 200, streamed.text
    assert "".join(data["token"] for _, data in events_of(streamed.text)) == cut


@pytest.mark.parametrize("change, field", [
    ({"stop_sequences": [[198, 10**9]]}, "parameters.stop_sequences.0.1"),  # beyond the vocabulary
    ({"stop_sequences": [[]]}, "parameters.stop_sequences.0"),
    ({"use_string": False}, "parameters.use_string"),
    ({"order": [1, 7]}, "parameters.order.1"),  # top-g
    ({"max_length": 0}, "parameters.max_length"),
    ({"top_p": 7.0}, "parameters.top_p"),
])
async def test_what_fabula_cannot_honour_is_400_naming_the_field(novelai, change, field) -> None:
    client, _, _ = novelai
    for route in ("/ai/generate", "/ai/generate-stream"):
        reply = await client.post(route, json=sillytavern_body(**change))
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["field"] == field


async def test_the_novelai_text_routes_need_a_signed_in_caller(novelai) -> None:
    client, _, _ = novelai
    reply = await client.post("/ai/generate", json=sillytavern_body(), headers={"Authorization": ""})
    assert reply.status_code == 401


async def test_cfg_phrase_rep_pen_unified_and_mirostat_are_novelais(novelai) -> None:
    client, url, _ = novelai
    newer = {"cfg_scale": 1.8, "cfg_uc": "A dull report.", "phrase_rep_pen": "medium", "unified_linear": 0.7,
             "unified_quad": 0.1, "unified_conf": -0.05, "mirostat_tau": 4.0, "mirostat_lr": 0.2,
             "order": [6, 9, 0, 8]}
    # NovelAI's route takes no seed: a temperature that leaves one choice makes both sides greedy on
    # the guided, penalised, reshaped distribution (mirostat v2 then keeps only that token).
    reply = await client.post("/ai/generate", json=sillytavern_body(temperature=0.0001, **newer))
    assert reply.status_code == 200, reply.text
    classic = ("top_k", "top_a", "top_p", "typical_p", "tail_free", "min_p")
    native = await client.post(f"{url}/ai/generate", json={
        "prompt": "The knight rode into the valley.", "max_new_tokens": 12, "min_new_tokens": 12,
        "sampling": {"temperature": 0.0001, "top_k": 40, "top_p": 0.9, "top_a": 0.1, "typical_p": 1.0,
                     "tail_free": 0.92, "repetition_penalty": 1.5, "repetition_penalty_range": 64,
                     "repetition_penalty_slope": 0.1, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                     "cfg_scale": 1.8, "cfg_uc": "A dull report.", "phrase_repetition_penalty": "medium",
                     "unified_linear": 0.7, "unified_quad": 0.1, "unified_conf": -0.05, "mirostat": 2,
                     "mirostat_tau": 4.0, "mirostat_eta": 0.2,
                     "sampler_order": [{"sampler": s} for s in ("unified", "temperature", "mirostat")]
                     + [{"sampler": s, "enabled": False} for s in classic]}})
    assert native.status_code == 200, native.text
    assert reply.json()["output"] == native.json()["text"]
