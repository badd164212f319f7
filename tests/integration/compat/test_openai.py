"""The OpenAI-compatible API with the official, unmodified `openai` package (and raw HTTP where
the package hides what is checked), authenticated by a personal API token."""

from __future__ import annotations

import json

import openai
import pytest

from tests.integration.compat.conftest import CHATML

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def client(compat):
    return openai.AsyncOpenAI(base_url=f"{compat.url}/v1", api_key=compat.token, max_retries=0)


async def test_models(client):
    models = await client.models.list()
    assert [model.id for model in models.data] == ["tiny-chat"]


async def test_completion_matches_the_native_route(client, compat):
    reply = await client.completions.create(model="tiny-chat", prompt="The knight", max_tokens=12, seed=5,
                                            temperature=0.9, top_p=0.95)
    choice = reply.choices[0]
    assert reply.object == "text_completion" and reply.model == "tiny-chat"
    assert reply.usage.completion_tokens <= 12 and reply.usage.total_tokens == (reply.usage.prompt_tokens
                                                                                + reply.usage.completion_tokens)
    # The same request through Fabula's own route gives the same text: one sampler, two front doors.
    native = await compat.api.post("/ai/generate", json={
        "model": "tiny-chat", "prompt": "The knight", "max_new_tokens": 12, "seed": 5, "preset": "neutral",
        "sampling": {"temperature": 0.9, "top_p": 0.95}})
    assert native.status_code == 200, native.text
    assert choice.text == native.json()["text"]
    assert choice.finish_reason == ("length" if native.json()["stats"]["finish_reason"] == "length" else "stop")


async def test_streamed_completion_equals_the_whole(client):
    whole = await client.completions.create(model="tiny-chat", prompt="Once", max_tokens=16, seed=2)
    stream = await client.completions.create(model="tiny-chat", prompt="Once", max_tokens=16, seed=2, stream=True,
                                             stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_stop_sequences(client):
    free = await client.completions.create(model="tiny-chat", prompt="The", max_tokens=24, seed=4)
    text = free.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = await client.completions.create(model="tiny-chat", prompt="The", max_tokens=24, seed=4, stop=[stop])
    assert stopped.choices[0].text == text[:text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


async def test_n_choices_and_seeds(client):
    reply = await client.completions.create(model="tiny-chat", prompt="A", max_tokens=8, n=3, seed=10)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    again = await client.completions.create(model="tiny-chat", prompt="A", max_tokens=8, seed=11)
    assert reply.choices[1].text == again.choices[0].text  # choice i uses seed + i


async def test_chat_uses_the_models_template(client, compat):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    reply = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10, seed=3)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
              "<|im_start|>assistant\n")
    native = await compat.api.post("/ai/generate", json={"model": "tiny-chat", "prompt": prompt, "max_new_tokens": 10,
                                                         "seed": 3, "preset": "neutral"})
    assert reply.choices[0].message.content == native.json()["text"]
    assert reply.usage.prompt_tokens == native.json()["stats"]["usage"]["prompt_tokens"]
    assert CHATML  # the template the fixture gave the model


async def test_chat_streaming(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell"}, {"type": "text", "text": " me"}]}]
    whole = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=12, seed=8)
    stream = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=12, seed=8,
                                                  stream=True)
    roles, pieces, finish = [], [], None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"] and "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


async def test_extra_samplers_as_body_fields(client, compat):
    extra = {"top_k": 5, "min_p": 0.05, "top_a": 0.1, "tfs": 0.95, "typical_p": 0.9, "repetition_penalty": 1.2,
             "repetition_penalty_range": 64, "repetition_penalty_slope": 0.7,
             "sampler_order": ["top_k", "top_a", "tfs", "typical_p", "top_p", "min_p", "temperature"]}
    reply = await client.completions.create(model="tiny-chat", prompt="The knight", max_tokens=12, seed=6,
                                            extra_body=extra)
    native = await compat.api.post("/ai/generate", json={
        "model": "tiny-chat", "prompt": "The knight", "max_new_tokens": 12, "seed": 6, "preset": "neutral",
        "sampling": {"top_k": 5, "min_p": 0.05, "top_a": 0.1, "tail_free": 0.95, "typical_p": 0.9,
                     "repetition_penalty": 1.2, "repetition_penalty_range": 64, "repetition_penalty_slope": 0.7,
                     "sampler_order": [{"sampler": name} for name in
                                       ("top_k", "top_a", "tail_free", "typical_p", "top_p", "min_p", "temperature")]}})
    assert reply.choices[0].text == native.json()["text"]


async def test_errors_in_openais_shape(client, compat):
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(model="tiny-chat", prompt="x", max_tokens=4, temperature=-1)
    error = raised.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "temperature", error
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(model="tiny-chat", prompt="x", max_tokens=4, logprobs=21)
    assert raised.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=4, top_logprobs=2)
    assert raised.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    assert raised.value.body["param"] == "model"
    bad = openai.AsyncOpenAI(base_url=f"{compat.url}/v1", api_key="fabula_pat_forged", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        await bad.models.list()
    assert raised.value.body["type"] == "authentication_error"
    raw = await compat.api.post("/v1/completions", json={"prompt": "x", "max_tokens": 0})
    body = raw.json()
    assert raw.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}, body


async def test_stream_lines_end_with_done(compat):
    reply = await compat.api.post("/v1/completions", json={"model": "tiny-chat", "prompt": "Hi", "max_tokens": 5,
                                                            "stream": True, "seed": 1})
    lines = [line for line in reply.text.replace("\r\n", "\n").split("\n") if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line.removeprefix("data: "))["object"] == "text_completion" for line in lines[:-1])


# --- logprobs -------------------------------------------------------------------------------------


def joined(tokens: list[str]) -> str:
    """The text of OpenAI's tokens, where `bytes:\\xe2\\x80` is a token holding part of a character
    (the tiny random model draws those freely)."""
    raw = b"".join(bytes(int(h, 16) for h in token[len("bytes:"):].split("\\x")[1:]) if token.startswith("bytes:")
                   else token.encode() for token in tokens)
    return raw.decode("utf-8", "replace")


async def test_completion_logprobs_are_the_models_own(client, compat):
    prompt = "The knight"
    reply = await client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=12, seed=5,
                                            temperature=0.7, logprobs=3)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) \
        == len(logprobs.text_offset) == reply.usage.completion_tokens
    assert joined(logprobs.tokens) == choice.text
    # Offsets count from the prompt's start, each token's where the previous one ended.
    assert logprobs.text_offset[0] == len(prompt)
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.text_offset[-1] < len(prompt) + len(choice.text)
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert token in top and top[token] == logprob and len(top) in (3, 4)
        assert logprob <= max(top.values()) <= 0
    # The model's own distribution (before penalties and samplers), as the native route reports it
    # in logprob_before: the temperature that drew the tokens does not change their log-probability.
    native = await compat.api.post("/ai/generate", json={
        "model": "tiny-chat", "prompt": prompt, "max_new_tokens": 12, "seed": 5, "preset": "neutral",
        "sampling": {"temperature": 0.7}, "top_probabilities": 3})
    assert native.status_code == 200, native.text
    before = [entry["logprob_before"] for entry in native.json()["probabilities"]]
    assert logprobs.token_logprobs == pytest.approx(before, abs=1e-6)


async def test_streamed_logprobs_equal_the_whole(client):
    whole = await client.completions.create(model="tiny-chat", prompt="Once", max_tokens=16, seed=2, logprobs=2)
    stream = await client.completions.create(model="tiny-chat", prompt="Once", max_tokens=16, seed=2, logprobs=2,
                                             stream=True)
    tokens, logprobs, offsets = [], [], []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                logprobs += choice.logprobs.token_logprobs
                offsets += choice.logprobs.text_offset
    assert tokens == whole.choices[0].logprobs.tokens
    assert logprobs == whole.choices[0].logprobs.token_logprobs
    assert offsets == whole.choices[0].logprobs.text_offset


async def test_logprobs_stop_with_the_text_a_stop_sequence_cut(client):
    free = await client.completions.create(model="tiny-chat", prompt="The", max_tokens=24, seed=4, logprobs=0)
    text = free.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    for stream in (False, True):
        answer = await client.completions.create(model="tiny-chat", prompt="The", max_tokens=24, seed=4, logprobs=0,
                                                 stop=[stop], stream=stream)
        if stream:
            tokens, cut = [], ""
            async for chunk in answer:
                for choice in chunk.choices:
                    cut += choice.text
                    tokens += choice.logprobs.tokens if choice.logprobs else []
        else:
            cut, tokens = answer.choices[0].text, answer.choices[0].logprobs.tokens
        assert cut == text[:text.index(stop)]
        # The tokens cover the text and stop at the token in which the stop sequence begins.
        everything = free.choices[0].logprobs
        assert tokens == everything.tokens[:len(tokens)] and len(tokens) < len(everything.tokens)
        assert joined(tokens).startswith(cut)
        assert everything.text_offset[len(tokens) - 1] < len("The") + len(cut) <= everything.text_offset[len(tokens)]


async def test_chat_logprobs_and_top_logprobs(client):
    messages = [{"role": "user", "content": "Hello"}]
    whole = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10, seed=3,
                                                 logprobs=True, top_logprobs=2)
    content = whole.choices[0].logprobs.content
    assert b"".join(bytes(entry.bytes) for entry in content).decode() == whole.choices[0].message.content
    for entry in content:
        assert [alt.logprob for alt in entry.top_logprobs] == sorted((alt.logprob for alt in entry.top_logprobs),
                                                                      reverse=True)
        assert len(entry.top_logprobs) == 2 and entry.logprob <= entry.top_logprobs[0].logprob <= 0
    stream = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10, seed=3,
                                                  logprobs=True, top_logprobs=2, stream=True)
    streamed = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content or []
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    # Without top_logprobs: the chosen tokens only; without logprobs: none at all.
    plain = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10, seed=3,
                                                 logprobs=True)
    assert [(e.token, e.logprob, e.top_logprobs) for e in plain.choices[0].logprobs.content] == \
        [(e.token, e.logprob, []) for e in content]
    none = await client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10, seed=3)
    assert none.choices[0].logprobs is None


async def test_llama_cpp_sampler_fields_as_body_fields(client, compat):
    extra = {"min_p": 0.02, "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
             "dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n"], "xtc_probability": 0.5,
             "xtc_threshold": 0.1, "samplers": ["dry", "min_p", "xtc", "temperature"]}
    reply = await client.completions.create(model="tiny-chat", prompt="The knight", max_tokens=12, seed=6,
                                            extra_body=extra)
    native = await compat.api.post("/ai/generate", json={
        "model": "tiny-chat", "prompt": "The knight", "max_new_tokens": 12, "seed": 6, "preset": "neutral",
        "sampling": {"min_p": 0.02, "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
                     "dry_penalty_last_n": 0, "dry_sequence_breakers": ["\n"], "xtc_probability": 0.5,
                     "xtc_threshold": 0.1,
                     "sampler_order": [{"sampler": name} for name in ("dry", "min_p", "xtc", "temperature")]
                     + [{"sampler": name, "enabled": False} for name in
                        ("top_k", "top_a", "top_p", "typical_p", "tail_free")]}})
    assert native.status_code == 200, native.text
    assert reply.choices[0].text == native.json()["text"]
    mirostat = await client.completions.create(model="tiny-chat", prompt="The knight", max_tokens=12, seed=6,
                                               extra_body={"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.1})
    again = await client.completions.create(model="tiny-chat", prompt="The knight", max_tokens=12, seed=6,
                                            extra_body={"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.1})
    assert mirostat.choices[0].text == again.choices[0].text
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(model="tiny-chat", prompt="x", max_tokens=4, extra_body={"dry_base": 0.5})
    assert raised.value.body["param"] == "dry_base"
