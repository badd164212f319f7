"""Streamed text never splits a UTF-8 character; held-back text covers every possible start of a
stop sequence or banned string."""

from __future__ import annotations

from services.text.decoding import IncrementalDetokenizer, OutputGuard, TokenBytes

TEXT = "The dragon 🐉 ate café crème in 東京, naïve résumé."


def test_pieces_are_whole_characters_and_add_up(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer, [])
    pieces = [detok.push(token) for token in ids]
    # Byte-level tokens split multi-byte characters; no piece may carry half of one.
    assert len(ids) > len(TEXT.encode()) // 4
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == TEXT
    assert detok.char_ends[-1] == len(TEXT)
    assert any(piece == "" for piece in pieces), "some token should end inside a character"


def test_truncate_goes_back_to_a_token_boundary(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer, [])
    for token in ids:
        detok.push(token)
    detok.truncate(5)
    fresh = IncrementalDetokenizer(tiny_tokenizer, [])
    for token in ids[:5]:
        fresh.push(token)
    assert detok.tokens == ids[:5]
    assert detok.text == fresh.text and detok.char_ends == fresh.char_ends
    assert TEXT.startswith(detok.text) and "\ufffd" not in detok.text


def test_token_at_char(tiny_tokenizer):
    ids = tiny_tokenizer.encode("abc dragon", add_special_tokens=False)
    detok = IncrementalDetokenizer(tiny_tokenizer, [])
    for token in ids:
        detok.push(token)
    index = detok.token_at_char(detok.text.index("dragon"))
    assert detok.char_ends[index] > detok.text.index("dragon")
    assert index == 0 or detok.char_ends[index - 1] <= detok.text.index("dragon")


def test_holdback_covers_every_prefix_of_stops_and_banned():
    guard = OutputGuard(["\n\n", "THE END"], ["dragon"])
    assert guard.holdback("hello") == 0
    assert guard.holdback("hello\n") == 1
    assert guard.holdback("the THE EN") == 6
    assert guard.holdback("a dra") == 3
    assert guard.holdback("a drag") == 4
    assert guard.holdback("a dragons") == 0


def test_first_match_prefers_the_earliest_and_only_looks_at_new_text():
    guard = OutputGuard(["END"], ["bad"])
    assert guard.first_match("xx bad END", 0).string == "bad"
    match = guard.first_match("xx END bad", 0)
    assert match.string == "END" and not match.banned
    assert guard.first_match("bad ok", 5) is None  # "bad" ended before the new text


def test_token_bytes_rebuild_the_text_even_where_a_token_splits_a_character(tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    token_bytes = TokenBytes(tiny_tokenizer)
    raw = [token_bytes(token) for token in ids]
    assert b"".join(raw).decode("utf-8") == TEXT
    # Some token holds part of a character: its text cannot show it, its bytes can.
    partial = [piece for piece in raw if not _is_utf8(piece)]
    assert partial, "the byte-level tokenizer should split some character"


def test_token_bytes_of_special_tokens_are_empty(tiny_tokenizer):
    assert TokenBytes(tiny_tokenizer)(tiny_tokenizer.eos_token_id) == b""


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_the_rust_decode_gives_the_text_transformers_decode_gives(tiny_tokenizer):
    import random

    from services.text.decoding import _rust_decode

    decode = _rust_decode(tiny_tokenizer)
    assert decode is not None  # a fast tokenizer with transformers' own decode: the short path is taken
    specials = [tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id]
    generator = random.Random(0)
    samples = [tiny_tokenizer.encode(TEXT, add_special_tokens=False), specials + [5, 6] + specials]
    samples += [[generator.randrange(len(tiny_tokenizer)) for _ in range(generator.randrange(1, 12))]
                for _ in range(300)]  # random ids: special tokens and split UTF-8 characters among them
    for ids in samples:
        assert decode(ids) == tiny_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_a_tokenizer_with_its_own_decode_keeps_it(tiny_tokenizer):
    from services.text.decoding import _rust_decode

    class Lowercasing(type(tiny_tokenizer)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).lower()

    lowercasing = Lowercasing(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token=tiny_tokenizer.eos_token)
    assert _rust_decode(lowercasing) is None
    detok = IncrementalDetokenizer(lowercasing, [])
    assert "".join(detok.push(token) for token in tiny_tokenizer.encode("The Dragon", add_special_tokens=False)) \
        == "the dragon"
