"""OpenAI's logprobs shapes from the text service's token probabilities: tokens that split a
character, text offsets counted from the prompt's start, and the tokens a stop sequence cut."""

from __future__ import annotations

import math

from fabula.text.v1 import text_pb2
from gateway.schemas.openai import LOGPROB_FLOOR, TokenLog

# "café ok": the "é" (c3 a9) split over two tokens, as a byte-level tokenizer may split it.
TOKENS = [b"caf", b"\xc3", b"\xa9", b" ok"]


def probs(raw: bytes, logprob: float, alternatives: list[tuple[bytes, float]] = ()) -> text_pb2.TokenProbabilities:
    text = raw.decode("utf-8", "replace")
    return text_pb2.TokenProbabilities(
        token_id=len(raw), text=text, token_bytes=raw, logprob_before=logprob, logprob_after=0.0,
        before=[text_pb2.TokenAlternative(token_id=i, text=alt.decode("utf-8", "replace"), token_bytes=alt, logprob=lp)
                for i, (alt, lp) in enumerate(alternatives)])


def test_legacy_object_offsets_and_partial_characters():
    log = TokenLog(2, chat=False, start=len("Say: "))
    entries = [probs(raw, -0.5 * (i + 1), [(raw, -0.5 * (i + 1)), (b"x", -3.0), (b"y", -4.0)])
               for i, raw in enumerate(TOKENS)]
    # The service sends the split character's tokens with the piece that completes it.
    first = log.add(entries[:1], "caf")
    second = log.add(entries[1:], "é ok")
    assert first["tokens"] + second["tokens"] == ["caf", "bytes:\\xc3", "bytes:\\xa9", " ok"]
    assert first["text_offset"] + second["text_offset"] == [5, 8, 8, 9]
    assert second["token_logprobs"] == [-1.0, -1.5, -2.0]
    # Two alternatives asked for; the chosen token is always there.
    assert second["top_logprobs"][0] == {"bytes:\\xc3": -1.0, "x": -3.0}


def test_chat_content_carries_the_bytes():
    log = TokenLog(1, chat=True)
    content = log.add([probs(raw, -1.0, [(raw, -1.0), (b"z", -2.0)]) for raw in TOKENS], "café ok")["content"]
    assert b"".join(bytes(entry["bytes"]) for entry in content).decode() == "café ok"
    assert [len(entry["top_logprobs"]) for entry in content] == [1, 1, 1, 1]
    assert content[1]["top_logprobs"][0] == {"token": "bytes:\\xc3", "logprob": -1.0, "bytes": [0xC3]}


def test_tokens_past_a_stop_sequence_are_left_out():
    log = TokenLog(0, chat=False)
    # The text was cut before " ok" (the stop sequence); the service still reports its token.
    cut = log.add([probs(raw, -1.0) for raw in TOKENS], "café")
    assert cut["tokens"] == ["caf", "bytes:\\xc3", "bytes:\\xa9"]
    assert log.add([probs(b"!", -1.0)], "") is None


def test_an_impossible_token_gets_openais_floor_not_infinity():
    entry = TokenLog(0, chat=True).add([probs(b"a", -math.inf)], "a")["content"][0]
    assert entry["logprob"] == LOGPROB_FLOOR and entry["top_logprobs"] == []
