"""The prompt language and its conditioning."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from services.image.conditioning import CHUNK_TOKENS, PromptTokenizer, encode, stage_prompt
from services.image.prompts import ChunkBreak, Dialect, Piece, parse, plain_text
from services.image.schedule import schedule, stage_at
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


# --- crossing brackets, both dialects, BREAK, prompt editing ---

N, A = Dialect.NOVELAI, Dialect.A1111
B = ChunkBreak()


@pytest.mark.parametrize("dialect, prompt, expected", [
    # NovelAI: every kind of bracket closes its own opener, whatever lies between.
    (N, "{a [b} c]", [Piece("a ", 1.05), Piece("b", 1.0), Piece(" c", 1 / 1.05)]),
    (N, "(a {b:1.2) c}", [Piece("a ", 1.2), Piece("b", 1.2 * 1.05), Piece(" c", 1.05)]),
    (N, "[a {b] c}", [Piece("a ", 1 / 1.05), Piece("b", 1.0), Piece(" c", 1.05)]),
    (N, "{a (b} c:2)", [Piece("a ", 1.05), Piece("b", 2 * 1.05), Piece(" c", 2.0)]),
    (N, "{a (b} c)", [Piece("a (b", 1.05), Piece(" c)", 1.0)]),
    (N, "{{a} b", [Piece("a", 1.05**2), Piece(" b", 1.05)]),
    (N, "a} [b", [Piece("a} ", 1.0), Piece("b", 1 / 1.05)]),
    (N, "(x:-1) (y:.5) (z:+2)", [Piece("x", -1.0), Piece(" ", 1.0), Piece("y", 0.5), Piece(" (z:+2)", 1.0)]),
    (N, "(x)", [Piece("(x)", 1.0)]),
    (N, "a BREAK b", [Piece("a BREAK b", 1.0)]),
    # AUTOMATIC1111 (its own doctests, and the same rules worked out for the cases they leave out).
    (A, "an (important) word", [Piece("an ", 1.0), Piece("important", 1.1), Piece(" word", 1.0)]),
    (A, "(unbalanced", [Piece("unbalanced", 1.1)]),
    (A, "\\(literal\\]", [Piece("(literal]", 1.0)]),
    (A, "(unnecessary)(parens)", [Piece("unnecessaryparens", 1.1)]),
    (A, "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [Piece("a ", 1.0), Piece("house", 1.1 * 1.1 * 1.3), Piece(" ", 1.1), Piece("on", 1.0), Piece(" a ", 1.1),
      Piece("hill", 0.55), Piece(", sun, ", 1.1), Piece("sky", 1.1**4), Piece(".", 1.1)]),
    (A, "((x))", [Piece("x", 1.21)]),
    (A, "[x]", [Piece("x", 1 / 1.1)]),
    (A, "(x:1.5) (y:+1.5) (z:1.) (w: 0.5 )",
     [Piece("x", 1.5), Piece(" ", 1.0), Piece("y", 1.5), Piece(" z ", 1.0), Piece("w", 0.5)]),
    (A, "(x:-2)", [Piece("x", -2.0)]),
    (A, "(x:1.2.3)", [Piece("x:1.2.3", 1.1)]),  # not a number: the colon is text, the ")" closes
    (A, "{x}", [Piece("{x}", 1.0)]),  # braces are text in this dialect
    (A, "(a [b) c]", [Piece("a ", 1.1), Piece("b", 1.0), Piece(" c", 1 / 1.1)]),
    (A, "a) b] (c", [Piece("a) b] ", 1.0), Piece("c", 1.1)]),
    (A, ":1.5) x", [Piece(":1.5) x", 1.0)]),
    (A, "\\\\ \\a", [Piece("\\ \\a", 1.0)]),
    (A, "a BREAK b", [Piece("a", 1.0), B, Piece("b", 1.0)]),
    (A, "(a BREAK b)", [Piece("a", 1.1), B, Piece("b", 1.1)]),
    (A, "BREAK a", [B, Piece("a", 1.0)]),
    (A, "aBREAK b, breaker BREAKS", [Piece("aBREAK b, breaker BREAKS", 1.0)]),
])
def test_parse_dialects(dialect, prompt, expected) -> None:
    got = parse(prompt, dialect)
    assert [type(p) for p in got] == [type(p) for p in expected]
    assert [getattr(p, "text", None) for p in got] == [getattr(p, "text", None) for p in expected]
    assert [getattr(p, "weight", 0) for p in got] == pytest.approx([getattr(p, "weight", 0) for p in expected])


@pytest.mark.parametrize("prompt, steps, expected", [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[cat:dog:0.5]", 20, [(10, "cat"), (20, "dog")]),
    ("[cat:dog:10]", 20, [(10, "cat"), (20, "dog")]),
    ("[cat:dog:0.25]", 10, [(2, "cat"), (10, "dog")]),  # int(2.5): fractions round down
    ("[cat::0.5]", 20, [(10, "cat"), (20, "")]),
    ("[cat:0.5]", 20, [(10, ""), (20, "cat")]),
    ("[cat:dog:1.]", 20, [(20, "cat")]),  # a dot makes it a fraction: all of the steps
    ("[cat:dog:1]", 20, [(1, "cat"), (20, "dog")]),
    ("[cat:dog:99]", 20, [(20, "cat")]),  # capped at the steps
    ("[cat:dog:0]", 20, [(20, "dog")]),
    ("[cat:dog:-3]", 20, [(20, "dog")]),
    ("[cat:dog:1e1]", 20, [(10, "cat"), (20, "dog")]),
    ("([cat:dog:2]:1.3) BREAK x", 4, [(2, "(cat:1.3) BREAK x"), (4, "(dog:1.3) BREAK x")]),
    ("[a|b]", 3, [(1, "a"), (2, "b"), (3, "a")]),
    ("[a:b]", 10, [(10, "[a:b]")]),
    ("\\[a:b:2\\]", 10, [(10, "\\[a:b:2\\]")]),
    ("a | [b:c:2]", 10, [(10, "a | [b:c:2]")]),  # a stray "|": A1111 cannot parse it and edits nothing
    ("[" * 100 + "a:b:2" + "]" * 100, 10, [(10, "[" * 100 + "a:b:2" + "]" * 100)]),  # too deep: as text
])
def test_prompt_editing_schedule(prompt, steps, expected) -> None:
    assert [(stage.until_step, stage.text) for stage in schedule(prompt, steps)] == expected


def test_a_stage_is_used_while_the_step_counter_is_at_most_its_end() -> None:
    # A1111's sampler counts steps from 0: "[cat:dog:10]" over 20 steps is cat for steps 0..10.
    ends = [stage.until_step for stage in schedule("[cat:dog:10]", 20)]
    assert [stage_at(ends, step) for step in (0, 10, 11, 19)] == [0, 0, 1, 1]


def test_break_starts_a_new_chunk(tokenizer) -> None:
    def sizes(prompt, dialect=A):
        return [len(c.token_ids) for c in tokenizer.tokenize(prompt, dialect).chunks]

    assert sizes("a cat BREAK a dog") == [2, 2]
    assert sizes("BREAK a dog") == [0, 2]  # A1111 pads an empty chunk here too
    assert sizes("a cat BREAK") == [2]
    assert sizes("a BREAK BREAK b") == [1, 0, 1]
    assert sizes("a cat BREAK a dog", N) == [5]  # NovelAI: just a word
    # A chunk that is already full is not followed by an empty one.
    assert sizes(" ".join(["cat"] * 75) + " BREAK dog") == [75, 1]
    weighted = tokenizer.tokenize("(cat) BREAK [dog]", A)
    assert [c.weights for c in weighted.chunks] == [[pytest.approx(1.1)], [pytest.approx(1 / 1.1)]]


def test_a_comma_at_the_76th_token_starts_the_next_chunk(tokenizer) -> None:
    # 60 words, a comma, 14 words, then a comma as token 76: A1111 cuts at 75 and the comma leads
    # the second chunk, rather than backing up to the earlier comma (which would make 61 + 25).
    prompt = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 14) + ", " + " ".join(["fox"] * 10)
    chunks = tokenizer.tokenize(prompt).chunks
    assert [len(c.token_ids) for c in chunks] == [75, 11]
    assert chunks[1].token_ids[0] == tokenizer.comma_id
    # A word as token 76 still moves the words after a comma within the last 20 tokens.
    moved = tokenizer.tokenize(" ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 20)).chunks
    assert [len(c.token_ids) for c in moved] == [61, 20]
    # A comma further back than that does not: the chunk is cut at 75.
    far = tokenizer.tokenize(" ".join(["cat"] * 54) + ", " + " ".join(["dog"] * 30)).chunks
    assert [len(c.token_ids) for c in far] == [75, 10]


def _window_weights(tokenizer, prompt: str) -> torch.Tensor:
    return torch.tensor([tokenizer.window(chunk)[1] for chunk in tokenizer.tokenize(prompt).chunks])


def test_emphasis_on_a_zero_mean_encoder_is_the_plain_weighting(tokenizer, encoder) -> None:
    # States centred exactly (as a final layer norm without bias gives): restoring the mean would
    # divide by ~0. The conditioning must be the states times their weights, nothing more.
    def centred(ids):
        hidden, pooled = encoder(ids)
        return hidden - hidden.mean(dim=(1, 2), keepdim=True), pooled

    prompt = "a (cat:1.5) on a {{hill}}"
    plain = encode([tokenizer], [centred], [tokenizer.tokenize("a cat on a hill")], 1).hidden
    weighted = encode([tokenizer], [centred], [tokenizer.tokenize(prompt)], 1).hidden
    weights = _window_weights(tokenizer, prompt)
    assert torch.allclose(weighted, plain * weights.unsqueeze(-1), atol=1e-6)
    assert torch.equal(weighted[0, 0], plain[0, 0])  # the start token keeps its sign and size


def test_emphasis_restores_a_clear_mean(tokenizer, encoder) -> None:
    def shifted(ids):
        hidden, pooled = encoder(ids)
        return hidden + 0.5, pooled

    prompt = "a (cat:1.5) on a hill"
    plain = encode([tokenizer], [shifted], [tokenizer.tokenize("a cat on a hill")], 1).hidden
    weighted = encode([tokenizer], [shifted], [tokenizer.tokenize(prompt)], 1).hidden
    scaled = plain * _window_weights(tokenizer, prompt).unsqueeze(-1)
    assert torch.allclose(weighted, scaled * (plain.mean() / scaled.mean()), atol=1e-6)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)


def test_staged_prompts_tokenize_every_stage(tokenizer) -> None:
    staged = stage_prompt([tokenizer], "a [cat:dog:0.5] BREAK (sky)", A, 4)
    assert [stage.until_step for stage in staged.stages] == [2, 4]
    assert [len(per[0].chunks) for per in staged.tokenized] == [2, 2]
    # NovelAI prompts have one stage whatever brackets they hold.
    assert len(stage_prompt([tokenizer], "a [cat:dog:0.5]", N, 4).stages) == 1
