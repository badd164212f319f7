"""The prompt language and its conditioning."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from services.image.conditioning import CHUNK_TOKENS, PromptTokenizer, encode
from services.image.prompts import Piece, parse, plain_text
from services.image.tiny import clip_tokenizer


@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [Piece("a cat", 1.0)]),
    ("{cat}", [Piece("cat", 1.05)]),
    ("{{cat}} dog", [Piece("cat", 1.05**2), Piece(" dog", 1.0)]),
    ("[[cat]]", [Piece("cat", 1.05**-2)]),
    ("{a [b]}", [Piece("a ", 1.05), Piece("b", 1.0)]),
    ("(red:1.3) hat", [Piece("red", 1.3), Piece(" hat", 1.0)]),
    ("((red:2):0.5)", [Piece("red", 1.0)]),
    ("{(red:2)}", [Piece("red", 2.1)]),
    ("saber (fate)", [Piece("saber (fate)", 1.0)]),
    ("\\{literal\\} \\(x:2\\)", [Piece("{literal} (x:2)", 1.0)]),
    ("{unclosed x", [Piece("unclosed x", 1.05)]),
    ("stray } and ]", [Piece("stray } and ]", 1.0)]),
    ("time: 3pm", [Piece("time: 3pm", 1.0)]),
])
def test_parse(prompt, expected) -> None:
    got = parse(prompt)
    assert [p.text for p in got] == [p.text for p in expected]
    assert [p.weight for p in got] == pytest.approx([p.weight for p in expected])


def test_plain_text_drops_only_syntax() -> None:
    assert plain_text("{a}, [b], (c:1.2), d (e)") == "a, b, c, d (e)"


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer(clip_tokenizer(), max_chunks=3)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer.tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()
    return lambda ids: (model(ids)[0].detach(), None)


def test_real_clip_token_counts(tokenizer) -> None:
    # Counts as real SD models see them: CLIP's BPE splits digits, keeps common words whole.
    assert tokenizer.tokenize("a castle at dawn, watercolor").token_count == 6
    assert tokenizer.tokenize("tag119").token_count == 4
    assert tokenizer.tokenizer.convert_tokens_to_ids("castle</w>") == 3540


def test_plain_prompts_match_the_tokenizer_and_window(tokenizer) -> None:
    text = "a photo of a cat"
    tokenized = tokenizer.tokenize(text)
    ids, weights = tokenizer.window(tokenized.chunks[0])
    reference = tokenizer.tokenizer(text, padding="max_length", max_length=77).input_ids
    assert ids == reference and weights == [1.0] * 77


def test_emphasis_scales_tokens_and_keeps_the_mean(tokenizer, encoder) -> None:
    plain = encode([tokenizer], [encoder], [tokenizer.tokenize("a cat on a hill")], 1).hidden
    weighted = encode([tokenizer], [encoder], [tokenizer.tokenize("a (cat:1.5) on a hill")], 1).hidden
    assert plain.shape == weighted.shape == (1, 77, 32)
    changed = (plain - weighted).abs().amax(dim=-1)[0]
    # "cat" (position 2) moves most; the mean is restored, so every position shifts a little.
    assert int(changed.argmax()) == 2
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-5)
    ratio = weighted[0, 2] / plain[0, 2]
    other = weighted[0, 4] / plain[0, 4]
    assert torch.allclose(ratio / other, torch.full_like(ratio, 1.5), rtol=1e-3)
    braces = encode([tokenizer], [encoder], [tokenizer.tokenize("a {{cat}} on a hill")], 1).hidden
    assert torch.allclose((braces[0, 2] / plain[0, 2]) / (braces[0, 4] / plain[0, 4]),
                          torch.full((32,), 1.05**2), rtol=1e-3)


def test_long_prompts_become_chunks_without_truncation(tokenizer, encoder) -> None:
    prompt = ", ".join(["red hat"] * 60)  # 179 tokens
    tokenized = tokenizer.tokenize(prompt)
    assert [len(c.token_ids) for c in tokenized.chunks] == [75, 75, 29] and not tokenized.dropped_words
    # A chunk that would split "big red hat" ends after the comma before it instead.
    shifted = tokenizer.tokenize("x, " + ", ".join(["big red hat"] * 30))
    assert [len(c.token_ids) for c in shifted.chunks][0] == 74
    assert tokenizer.tokenizer.convert_ids_to_tokens(shifted.chunks[0].token_ids[-1]) == ",</w>"
    assert all(len(c.token_ids) <= CHUNK_TOKENS for c in tokenized.chunks)
    conditioning = encode([tokenizer], [encoder], [tokenized], 3)
    assert conditioning.hidden.shape == (1, 3 * 77, 32)
    # Each chunk is encoded on its own: the second chunk equals encoding its tokens alone.
    second, _ = tokenizer.window(tokenized.chunks[1])
    alone = encoder(torch.tensor([second]))[0]
    assert torch.equal(conditioning.hidden[:, 77:154], alone)
    # A shorter partner (the negative prompt) is padded with empty chunks to the same length.
    padded = encode([tokenizer], [encoder], [tokenizer.tokenize("")], 3)
    assert padded.hidden.shape == (1, 3 * 77, 32)


def test_words_beyond_the_limit_are_dropped_and_named(tokenizer) -> None:
    prompt = " ".join(f"word{i}" for i in range(200)) + " finale"
    tokenized = tokenizer.tokenize(prompt)
    assert len(tokenized.chunks) == 3 and tokenized.token_count <= 3 * CHUNK_TOKENS
    assert tokenized.dropped_words[-1] == "finale" and tokenized.dropped_words[0].startswith("word")
    kept = tokenizer.tokenizer.decode([i for c in tokenized.chunks for i in c.token_ids]).split()
    assert len(kept) > 0
