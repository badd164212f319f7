"""Caller tokens: what the gateway signs is what a service accepts, and nothing else is."""

from __future__ import annotations

import base64

import pytest

from services.toolkit.callers import (
    CLOCK_SKEW_S, TokenSigner, TokenVerifier, main, new_key_pair, parse_public_keys, public_key_of)
from services.toolkit.errors import Unauthenticated


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys() -> tuple[str, str]:
    return new_key_pair()


def test_a_signed_token_names_its_user(keys):
    signing, public = keys
    token = TokenSigner(signing).mint("user-1", "text")
    assert TokenVerifier(parse_public_keys(public), "text").verify(token).user_id == "user-1"


def test_public_key_of_matches_the_pair(keys):
    assert public_key_of(keys[0]) == keys[1]


def test_missing_token_is_unauthenticated(keys):
    with pytest.raises(Unauthenticated) as raised:
        TokenVerifier(parse_public_keys(keys[1]), "text").verify("")
    assert raised.value.reason == "CALLER_TOKEN_MISSING"
    assert raised.value.field == "fabula-caller"


def test_token_of_another_key_is_refused(keys):
    forged = TokenSigner(new_key_pair()[0]).mint("user-1", "text")
    with pytest.raises(Unauthenticated, match="bad signature"):
        TokenVerifier(parse_public_keys(keys[1]), "text").verify(forged)


def test_changed_payload_is_refused(keys):
    signing, public = keys
    version, payload, signature = TokenSigner(signing).mint("user-1", "text").split(".")
    other = TokenSigner(signing).mint("user-2", "text").split(".")[1]
    with pytest.raises(Unauthenticated, match="bad signature"):
        TokenVerifier(parse_public_keys(public), "text").verify(f"{version}.{other}.{signature}")


def test_expired_token_is_refused_after_the_skew(keys):
    signing, public = keys
    clock = Clock()
    token = TokenSigner(signing, ttl_s=30, clock=clock).mint("user-1", "text")
    verifier = TokenVerifier(parse_public_keys(public), "text", clock=clock)
    clock.now += 30 + CLOCK_SKEW_S - 0.5
    assert verifier.verify(token).user_id == "user-1"
    clock.now += 1
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_the_signer_reuses_a_token_for_half_its_lifetime(keys):
    signing, public = keys
    clock = Clock()
    signer = TokenSigner(signing, ttl_s=30, clock=clock)
    first = signer.mint("user-1", "text")
    assert signer.mint("user-1", "text") == first
    assert signer.mint("user-2", "text") != first and signer.mint("user-1", "editor") != first
    clock.now += 15 - 0.5
    assert signer.mint("user-1", "text") == first
    clock.now += 1
    renewed = signer.mint("user-1", "text")
    assert renewed != first
    # The renewed token lives a whole lifetime from now, past the first one's expiry.
    verifier = TokenVerifier(parse_public_keys(public), "text", clock=clock)
    clock.now += 30 - 1 + CLOCK_SKEW_S
    assert verifier.verify(renewed).user_id == "user-1"
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(first)


def test_a_remembered_token_still_expires(keys):
    signing, public = keys
    clock = Clock()
    token = TokenSigner(signing, ttl_s=30, clock=clock).mint("user-1", "text")
    verifier = TokenVerifier(parse_public_keys(public), "text", clock=clock)
    assert verifier.verify(token).user_id == "user-1"
    assert verifier.verify(token).user_id == "user-1"  # from memory
    clock.now += 30 + CLOCK_SKEW_S + 0.5
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)


def test_token_for_another_service_is_refused(keys):
    signing, public = keys
    token = TokenSigner(signing).mint("user-1", "text")
    with pytest.raises(Unauthenticated, match="meant for 'text'"):
        TokenVerifier(parse_public_keys(public), "editor").verify(token)


@pytest.mark.parametrize("token", ["nonsense", "v1.a.b.c", "v2.e30.AAAA", "v1.!!!.???", "v1." + "A" * 5000 + ".x"])
def test_malformed_tokens_are_refused(keys, token):
    with pytest.raises(Unauthenticated):
        TokenVerifier(parse_public_keys(keys[1]), "text").verify(token)


def test_either_key_of_a_rotation_is_accepted(keys):
    old_signing, old_public = keys
    new_signing, new_public = new_key_pair()
    verifier = TokenVerifier(parse_public_keys(f"{old_public}, {new_public}"), "image")
    assert verifier.verify(TokenSigner(old_signing).mint("a", "image")).user_id == "a"
    assert verifier.verify(TokenSigner(new_signing).mint("b", "image")).user_id == "b"


def test_a_hex_signing_key_works_like_its_base64(keys):
    signing, public = keys
    hex_key = base64.b64decode(signing).hex()
    assert public_key_of(hex_key) == public
    token = TokenSigner(hex_key).mint("u", "text")
    assert TokenVerifier(parse_public_keys(public), "text").verify(token).user_id == "u"


def test_the_command_prints_a_pair_and_a_public_key(keys, capsys):
    main([])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.split())
    assert public_key_of(lines["signing-key"]) == lines["public-keys"]
    main([keys[0]])
    assert capsys.readouterr().out.strip() == keys[1]


@pytest.mark.parametrize("text, message", [("not base64!", "neither base64 nor"), ("AAAA", "must be 32 bytes")])
def test_bad_public_keys_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_public_keys(text)
