"""From generated tokens to text that is safe to show: whole UTF-8 characters only, and nothing that
might turn out to be the start of a stop sequence or a banned string.

`IncrementalDetokenizer` turns tokens into text as they come (a byte-level token can end in the
middle of a character; its text appears once the character is complete) and remembers where each
token's text ends, so a backtrack can cut the text at a token boundary.
`OutputGuard` finds stop sequences and banned strings and says how much text must be held back.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded in front of the output, so tokenizers whose decoding depends on the
# preceding token (SentencePiece's leading space) render the first output token correctly.
_CONTEXT_TOKENS = 4


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (every byte drawn as a printable character), character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class TokenBytes:
    """A token's own bytes, which its decoded text cannot show when the token holds part of a
    UTF-8 character: byte-level BPE pieces are read through GPT-2's byte alphabet, SentencePiece's
    byte-fallback pieces (`<0xE2>`) are that byte, other pieces are their text with SentencePiece's
    space marker as a space. Special tokens (end of text, chat markers) have no bytes: they are not
    part of the text."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
        self._special = set(getattr(tokenizer, "all_special_ids", ()))
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        found = self._cache.get(token)
        if found is None:
            found = self._cache[token] = self._bytes(token)
        return found

    def _bytes(self, token: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if token in self._special:
            return b""
        if self._byte_level:
            alphabet = _byte_level_alphabet()
            if all(char in alphabet for char in piece):
                return bytes(alphabet[char] for char in piece)
        if match := _BYTE_PIECE.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        return piece.replace(_SPIECE_SPACE, " ").encode()


def _rust_decode(tokenizer):
    """The Rust tokenizer's own `decode` when the transformers tokenizer's adds nothing to it (a
    fast tokenizer whose class keeps transformers' `decode` and `_decode`, called without the
    clean-up): the same text, without the wrapper's argument handling, which cost more than the
    decoding itself (4.3 against 1.7 us a call on a short text). None for any other tokenizer."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = type(tokenizer)
    if (backend is None or not isinstance(tokenizer, PreTrainedTokenizerFast)
            or kind.decode is not PreTrainedTokenizerFast.decode or kind._decode is not PreTrainedTokenizerFast._decode):
        return None
    return functools.partial(backend.decode, skip_special_tokens=True)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._rust_decode = _rust_decode(tokenizer)
        self._context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        # char_ends[i]: len(self.text) once tokens[: i + 1] are decoded.
        self.char_ends: list[int] = []
        self._all = list(self._context)
        self._prefix_offset = 0
        self._read_offset = len(self._all)

    def _decode(self, tokens: list[int]) -> str:
        if self._rust_decode is not None:
            return self._rust_decode(tokens)
        return self._tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add one token; returns the text it completed (possibly empty)."""
        self.tokens.append(token)
        self._all.append(token)
        before = self._decode(self._all[self._prefix_offset: self._read_offset])
        after = self._decode(self._all[self._prefix_offset:])
        delta = ""
        if len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR):
            delta = after[len(before):]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._all)
            self.text += delta
        self.char_ends.append(len(self.text))
        return delta

    def truncate(self, keep_tokens: int) -> None:
        """Forget every token from `keep_tokens` on (a backtrack); replays the rest (rare)."""
        kept = self.tokens[:keep_tokens]
        self.reset()
        for token in kept:
            self.push(token)

    def token_at_char(self, char_index: int) -> int:
        """Index of the token whose text contains character `char_index`."""
        for index, end in enumerate(self.char_ends):
            if end > char_index:
                return index
        return len(self.tokens) - 1

    def safe_token_boundary(self, char_limit: int) -> int:
        """The longest text length ending at a token boundary that is <= `char_limit`."""
        best = 0
        for end in self.char_ends:
            if end <= char_limit:
                best = end
            else:
                break
        return best


@dataclass(frozen=True)
class Match:
    start: int
    string: str
    banned: bool


class OutputGuard:
    """Stop sequences end the output before them; banned strings must never appear."""

    def __init__(self, stop_sequences: Sequence[str], banned_strings: Sequence[str]) -> None:
        self.stops = tuple(stop_sequences)
        self.banned = tuple(banned_strings)
        self._all = [(s, False) for s in self.stops] + [(s, True) for s in self.banned]

    @property
    def active(self) -> bool:
        return bool(self._all)

    def first_match(self, text: str, new_from: int) -> Match | None:
        """The earliest stop/banned string that ends in the text added since `new_from`."""
        best: Match | None = None
        for string, banned in self._all:
            start = text.find(string, max(0, new_from - len(string) + 1))
            if start >= 0 and (best is None or start < best.start or (start == best.start and banned)):
                best = Match(start, string, banned)
        return best

    def holdback(self, text: str) -> int:
        """How many trailing characters may be the beginning of a stop or banned string."""
        held = 0
        for string, _ in self._all:
            for length in range(min(len(string) - 1, len(text)), held, -1):
                if text.endswith(string[:length]):
                    held = length
                    break
        return held
