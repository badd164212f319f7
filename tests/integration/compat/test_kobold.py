"""The KoboldAI / KoboldCpp API over raw HTTP, with the exact bodies SillyTavern and KoboldAI Lite
send, authenticated by a personal API token. No maintained KoboldAI client library exists on PyPI
(koboldapi pulls document-extraction packages and has not moved in a year), so these are raw HTTP,
as the front ends themselves are."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from services.text.models import load_model
from services.text.testing import build_tiny_model
from tests.integration.compat.conftest import compat_stack
from tests.integration.gateway.harness import events_of

# SillyTavern/SillyTavern, public/scripts/kai-settings.js, getKoboldGenerationData(): the body it
# posts to a KoboldAI/KoboldCpp server's /api/v1/generate, with SillyTavern's default kai_settings.
SILLYTAVERN_BODY = {
    "prompt": "The tavern was quiet. The bard said",
    "gui_settings": False,
    "sampler_order": [6, 0, 1, 2, 3, 4, 5],
    "max_context_length": 512,
    "max_length": 24,
    "rep_pen": 1.05,
    "rep_pen_range": 512,
    "rep_pen_slope": 0.9,
    "temperature": 0.65,
    "tfs": 1,
    "top_a": 0,
    "top_k": 0,
    "top_p": 0.9,
    "typical": 1,
    "s1": 6, "s2": 0, "s3": 1, "s4": 2, "s5": 3, "s6": 4, "s7": 5,
    "use_world_info": False,
    "singleline": False,
    "stop_sequence": ["\nYou:"],
    "streaming": False,
    "can_abort": True,
}

# LostRuins/lite.koboldai.net, koboldcpp_api.json (GenerationInput, the request KoboldAI Lite
# builds for KoboldCpp): the sampler fields, genkey, memory, trim_stop, banned_tokens, logit_bias.
LITE_BODY = {
    "n": 1,
    "max_context_length": 512,
    "max_length": 20,
    "rep_pen": 1.07,
    "temperature": 0.75,
    "top_p": 0.92,
    "top_k": 100,
    "top_a": 0,
    "typical": 1,
    "tfs": 1,
    "rep_pen_range": 360,
    "rep_pen_slope": 0.7,
    "sampler_order": [6, 0, 1, 3, 4, 2, 5],
    "memory": "[The story is set in a lighthouse.]\n",
    "trim_stop": True,
    "genkey": "KCPP1234",
    "min_p": 0,
    "dynatemp_range": 0,
    "dynatemp_exponent": 1,
    "smoothing_factor": 0,
    "nsigma": 0,
    "banned_tokens": [],
    "render_special": False,
    "logprobs": False,
    "presence_penalty": 0,
    "logit_bias": {},
    "prompt": "The keeper climbed the stairs",
    "quiet": True,
    "stop_sequence": ["You:", "\nYou "],
    "use_default_badwordsids": False,
    "bypass_eos": False,
    "sampler_seed": 77,
}


@pytest.fixture
def api(compat) -> httpx.AsyncClient:
    return compat.api


def _native(body: dict, sampling: dict, order: list[str], **extra) -> dict:
    return {"model": "", "prompt": body["prompt"], "preset": "neutral", "max_new_tokens": body["max_length"],
            "stop_sequences": body.get("stop_sequence", []),
            "sampling": {**sampling, "sampler_convention": "koboldcpp",
                         "sampler_order": [{"sampler": name, "enabled": name in order} for name in
                                           order + [n for n in ("temperature", "top_k", "top_a", "top_p", "typical_p",
                                                                "tail_free", "min_p") if n not in order]]},
            **extra}


async def test_sillytavern_generate(api):
    body = {**SILLYTAVERN_BODY, "sampler_seed": 5}
    reply = await api.post("/api/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    result = reply.json()["results"][0]
    assert result["finish_reason"] in ("length", "stop") and "\nYou:" not in result["text"]
    # The same generation through Fabula's own route, spelled in Fabula's names: KoboldAI's order
    # [6, 0, 1, 2, 3, 4, 5] is top_k, top_a, top_p (with min_p), tail_free, typical_p, temperature.
    native = await api.post("/ai/generate", json=_native(body, {
        "temperature": 0.65, "top_k": 0, "top_p": 0.9, "top_a": 0, "typical_p": 1, "tail_free": 1,
        "repetition_penalty": 1.05, "repetition_penalty_range": 512, "repetition_penalty_slope": 0.9},
        ["top_k", "top_a", "top_p", "min_p", "tail_free", "typical_p", "temperature"], seed=5))
    assert native.status_code == 200, native.text
    assert result["text"] == native.json()["text"]


async def test_lite_stream_equals_generate(api):
    whole = await api.post("/api/v1/generate", json=LITE_BODY)
    assert whole.status_code == 200, whole.text
    streamed = await api.post("/api/extra/generate/stream", json=LITE_BODY)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = events_of(streamed.text)
    assert {kind for kind, _ in events} == {"message"}
    assert "".join(data["token"] for _, data in events) == whole.json()["results"][0]["text"]
    assert events[-1][1]["finish_reason"] == whole.json()["results"][0]["finish_reason"]
    # memory goes before the prompt, as KoboldCpp puts it.
    native = await api.post("/ai/generate", json=_native(
        {**LITE_BODY, "prompt": LITE_BODY["memory"] + LITE_BODY["prompt"]},
        {"temperature": 0.75, "top_p": 0.92, "top_k": 100, "top_a": 0, "typical_p": 1, "tail_free": 1, "min_p": 0,
         "repetition_penalty": 1.07, "repetition_penalty_range": 360, "repetition_penalty_slope": 0.7,
         "presence_penalty": 0},
        ["top_k", "top_a", "tail_free", "typical_p", "top_p", "min_p", "temperature"], seed=77))
    assert native.json()["text"] == whole.json()["results"][0]["text"]


async def test_rep_pen_range_zero_means_no_penalty(api):
    base = {**LITE_BODY, "rep_pen": 1.5, "max_length": 30}
    off = await api.post("/api/v1/generate", json={**base, "rep_pen_range": 0})
    neutral = await api.post("/api/v1/generate", json={**base, "rep_pen": 1.0, "rep_pen_range": 0})
    whole_context = await api.post("/ai/generate", json=_native(
        {**base, "prompt": base["memory"] + base["prompt"]},
        {"temperature": 0.75, "top_p": 0.92, "top_k": 100, "repetition_penalty": 1.5, "repetition_penalty_range": 0},
        ["top_k", "top_a", "tail_free", "typical_p", "top_p", "min_p", "temperature"], seed=77))
    assert off.json()["results"][0]["text"] == neutral.json()["results"][0]["text"]
    # Fabula's own 0 is the whole context: a different thing, which the translation must not pass on.
    assert whole_context.status_code == 200


async def test_what_clients_ask_first(api, compat):
    assert (await api.get("/api/v1/model")).json() == {"result": "fabula/tiny-chat"}
    assert (await api.get("/api/v1/config/max_context_length")).json() == {"value": 512}
    assert (await api.get("/api/extra/true_max_context_length")).json() == {"value": 512}
    assert (await api.get("/api/v1/info/version")).json() == {"result": "1.2.5"}
    assert (await api.get("/api/extra/version")).json()["result"] == "KoboldCpp"
    count = (await api.post("/api/extra/tokencount", json={"prompt": "The keeper climbed"})).json()
    native = (await api.post("/ai/tokenize", json={"text": "The keeper climbed"})).json()
    assert count == {"value": len(native["token_ids"]), "ids": native["token_ids"]}


async def test_errors_in_koboldais_shape(api, compat):
    for body, field in (({**LITE_BODY, "sampler_order": [9, 0, 1, 2, 3, 4, 5]}, "sampler_order[0]"),
                        ({**LITE_BODY, "nsigma": 1.0}, "nsigma"), ({**LITE_BODY, "mirostat": 3}, "mirostat"),
                        ({**LITE_BODY, "temperature": -1}, "temperature")):
        reply = await api.post("/api/v1/generate", json=body)
        assert reply.status_code == 400, reply.text
        detail = reply.json()["detail"]
        assert detail["type"] == "bad_input" and field in detail["msg"], detail
    anonymous = await httpx.AsyncClient(base_url=compat.url).get("/api/v1/model")
    assert anonymous.status_code == 401 and anonymous.json()["detail"]["type"] == "unauthorized"


@pytest.fixture
async def long_compat(tmp_path, tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-long") / "tiny-long", seed=2, context_window=16384)
    model = load_model("tiny-long", str(folder), cache_dir=folder.parent / "cache", device="cpu", dtype="float32",
                       quantization="none")
    async with compat_stack(tmp_path, [model], text_options={"max_new_tokens": 16000}) as running:
        yield running


# Long enough that only an abort ends it within the test (the EOS token is banned).
ENDLESS = {"prompt": "Once", "max_length": 12000, "use_default_badwordsids": True, "genkey": "KCPP-abort-me"}


async def test_abort_stops_a_stream(long_compat):
    api = long_compat.api
    async with api.stream("POST", "/api/extra/generate/stream", json=ENDLESS) as stream:
        lines = stream.aiter_lines()
        while not (await anext(lines)).startswith("data:"):
            pass
        assert (await api.post("/api/extra/abort", json={"genkey": "not-running"})).json()["success"] == "false"
        assert (await api.post("/api/extra/abort", json={"genkey": ENDLESS["genkey"]})).json()["success"] == "true"
        rest = [line async for line in lines if line.startswith("data:")]
    assert json.loads(rest[-1].removeprefix("data:"))["finish_reason"] == "abort"


async def test_abort_answers_generate_with_the_text_so_far(long_compat):
    api = long_compat.api
    generation = asyncio.create_task(api.post("/api/v1/generate", json=ENDLESS, timeout=60))
    while True:  # the genkey is known once the generation has started
        await asyncio.sleep(0.2)
        if (await api.post("/api/extra/abort", json={"genkey": ENDLESS["genkey"]})).json()["success"] == "true":
            break
    reply = await generation
    assert reply.status_code == 200, reply.text
    result = reply.json()["results"][0]
    # The text so far may be empty: on a busy machine the abort can land before the first token.
    assert result["finish_reason"] == "abort" and result["completion_tokens"] < ENDLESS["max_length"]


async def test_mirostat_dry_and_xtc_are_koboldcpps(api, compat):
    """KoboldCpp's names for the newer samplers reach the same samplers as the native route, with
    mirostat in KoboldCpp's place: the temperature and mirostat, the order's truncations off."""
    body = {"prompt": "The keeper climbed the stairs", "max_length": 12, "use_default_badwordsids": True,
            "sampler_seed": 5, "temperature": 0.8, "top_k": 40, "mirostat": 2, "mirostat_tau": 3.0,
            "mirostat_eta": 0.2, "dry_multiplier": 0.8, "dry_base": 1.5, "dry_allowed_length": 2,
            "dry_penalty_last_n": 64, "dry_sequence_breakers": ["\n", ":"], "xtc_probability": 0.5,
            "xtc_threshold": 0.1}
    kobold = await api.post("/api/v1/generate", json=body)
    assert kobold.status_code == 200, kobold.text
    classic = ("top_k", "top_a", "top_p", "typical_p", "tail_free", "min_p")
    native = await api.post("/ai/generate", json={
        "prompt": body["prompt"], "max_new_tokens": 12, "min_new_tokens": 12, "seed": 5, "preset": "neutral",
        "sampling": {"temperature": 0.8, "top_k": 40, "mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2,
                     "dry_multiplier": 0.8, "dry_base": 1.5, "dry_allowed_length": 2, "dry_penalty_last_n": 64,
                     "dry_sequence_breakers": ["\n", ":"], "xtc_probability": 0.5, "xtc_threshold": 0.1,
                     "sampler_convention": "koboldcpp",
                     "sampler_order": [{"sampler": "temperature"}]
                     + [{"sampler": name, "enabled": False} for name in classic]}})
    assert native.status_code == 200, native.text
    assert kobold.json()["results"][0]["text"] == native.json()["text"]
    bad = await api.post("/api/v1/generate", json={**body, "xtc_threshold": 2})
    assert bad.status_code == 400 and "xtc_threshold" in bad.json()["detail"]["msg"]
    # The gateway names a list item as "breakers.1" (it checks the breakers itself), the service "[1]".
    for sampling, field in (({"dry_sequence_breakers": ["\n", ""]}, "sampling.dry_sequence_breakers.1"),
                            ({"phrase_repetition_penalty": "loud"}, "sampling.phrase_repetition_penalty"),
                            ({"cfg_scale": 1000}, "sampling.cfg_scale")):
        refused = await api.post("/ai/generate", json={"prompt": "x", "max_new_tokens": 2, "sampling": sampling})
        assert refused.status_code in (400, 422), refused.text
        assert field in refused.text, refused.text
