"""Story documents: opening a 1 MB story with 5,000 history nodes, and what one more generation
costs to save, on the full stack (SDK → gateway process → editor process on SQLite).

The story is built the way a writer makes one: an opening prompt, then generations of about 200
characters, with a retry every fifth, an undo every thirteenth and an edit every seventh, until
5,000 nodes and about 1 MB of text at the head. It is stored once (story + snapshot), then:

- `open_1mb_story_ms`: a second signed-in device opens it (fetch story, snapshot and segments,
  decrypt, inflate, parse, rebuild the text at the head), median of the rounds;
  `open_decode_only_ms` is the same without the network (decrypt and rebuild from blobs in memory).
- `save_after_generation_bytes`: the request bodies the SDK sends for one more generation on it
  (one history segment + the story object; JSON with base64 data, as the HTTP API takes them),
  median of the rounds; `full_document_bytes`: the same for writing the whole story (story +
  snapshot), which a save without history segments would send every time.
- `ratios.save_bytes_vs_full_document` = full_document_bytes / save_after_generation_bytes.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.storage import running_stack

NODES = 5_000
TARGET_TEXT_CHARS = 1_000_000
ROUNDS = 7
PASSWORD = "bench documents password"
# A vocabulary of made-up words (a few thousand, as a story uses): compresses about as well as prose,
# where a handful of repeated words would flatter compression and so every ratio.
_SYLLABLES = "ka lo mi ra te su no ve ri an el or is un ga po de th sh wa ye li mo ne".split()
_WORDS = sorted({"".join(random.Random(seed).choices(_SYLLABLES, k=1 + seed % 3)) for seed in range(4000)})


def _sentence(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(word) + 1 for word in words) < chars:
        words.append(rng.choice(_WORDS))
    return " " + " ".join(words).capitalize() + "."


def build_history(nodes: int = NODES, target_chars: int = TARGET_TEXT_CHARS):
    """A history tree of `nodes` nodes whose head text is about `target_chars` characters."""
    from fabula_sdk.documents import History, Origin, TextBlock

    rng = random.Random(1)
    history = History.new([TextBlock("The keeper climbed the stairs to the lamp room.", Origin.PROMPT)])
    # Retries, undos and edits make about a third of the nodes, and a retry replaces a generation.
    per_generation = max(40, target_chars // int(nodes * 0.66))
    while len(history) < nodes:
        count = len(history)
        if count % 13 == 0 and history.node(history.head).parent is not None:
            history.undo()
            history.generate(_sentence(rng, per_generation))
        elif count % 7 == 0:
            text = history.text
            start = rng.randrange(max(1, len(text) - 200), len(text)) if text else 0
            history.edit(start, min(len(text), start + 5), rng.choice(_WORDS))
        elif count % 5 == 0 and history.node(history.head).kind in ("generation", "retry"):
            history.retry(_sentence(rng, per_generation))
        else:
            history.generate(_sentence(rng, per_generation))
    return history


class _BytesSent:
    """Counts the request body bytes an SDK client sends (an httpx request hook)."""

    def __init__(self, client) -> None:
        self.total = 0
        client.transport._http.event_hooks["request"].append(self._count)

    def _count(self, request) -> None:
        self.total += len(request.content)


def run() -> dict[str, Any]:
    from fabula_sdk import MINIMUM_KDF, FabulaClient, ObjectType, envelope
    from fabula_sdk.documents import History, Story, StoryContent
    from fabula_sdk.documents.store import DocumentStore, StoryDocument, new_id

    history = build_history()
    text_chars = len(history.text)
    with tempfile.TemporaryDirectory(prefix="fabula-bench-documents-") as workdir, \
            running_stack(Path(workdir)) as stack:
        writer = FabulaClient.connect(stack.url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        writer.register("bench", PASSWORD)
        reader = FabulaClient.connect(stack.url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        reader.login("bench", PASSWORD)
        sent = _BytesSent(writer)
        store = DocumentStore(writer, compact_after=10_000)  # the rounds measure segments, not compaction

        doc = StoryDocument(id=new_id(), story=Story(content_id=new_id(), title="Bench"), history=history)
        before = sent.total
        store.save(doc)
        full_document_bytes = sent.total - before
        content_blob_bytes = len(envelope.seal_object(b"\0" * 32, ObjectType.STORY_CONTENT, doc.content_id,
                                                      doc.history.compacted(0).to_bytes(), revision=1))

        save_bytes, open_ms, decode_ms = [], [], []
        rng = random.Random(2)
        for _ in range(ROUNDS):
            doc.history.generate(_sentence(rng, 200))
            before = sent.total
            store.save(doc)
            save_bytes.append(sent.total - before)

            started = time.perf_counter()
            opened = DocumentStore(reader).open(doc.id)
            open_ms.append((time.perf_counter() - started) * 1000)
            if opened.text != doc.text:
                raise RuntimeError("the opened story is not the saved one")

            story_plain = reader.get(ObjectType.STORY, doc.id).plaintext
            content_key = reader.keystore.key_for(ObjectType.STORY_CONTENT, doc.content_id)
            content_blob = envelope.seal_object(content_key, ObjectType.STORY_CONTENT, doc.content_id,
                                                doc.history.compacted(0).to_bytes(), revision=1)
            started = time.perf_counter()
            Story.from_bytes(story_plain)
            plain = envelope.open_object(content_key, ObjectType.STORY_CONTENT, doc.content_id,
                                         content_blob).plaintext
            History.from_stored(StoryContent.from_bytes(plain))
            decode_ms.append((time.perf_counter() - started) * 1000)
        writer.close()
        reader.close()

    save = statistics.median(save_bytes)
    figures = {
        "open_1mb_story_ms": statistics.median(open_ms),
        "open_decode_only_ms": statistics.median(decode_ms),
        "save_after_generation_bytes": save,
        "full_document_bytes": full_document_bytes,
        "content_blob_bytes": content_blob_bytes,
        "text_chars": text_chars,
        "history_nodes": len(history) + ROUNDS,
        "rounds": ROUNDS,
    }
    return {
        "figures": figures,
        "ratios": {"save_bytes_vs_full_document": full_document_bytes / save},
        "summary": (
            f"A story of {text_chars:,} characters at the head and {NODES:,} history nodes (generations of about "
            "200 characters, a retry every 5th node, an edit every 7th, an undo every 13th), on the full stack "
            "(SDK over HTTP → gateway process → editor process on SQLite, one machine). Opening is a second "
            f"device's `DocumentStore.open` (median of {ROUNDS}); `open_decode_only_ms` decrypts, inflates and "
            "rebuilds the same snapshot from memory. Bytes are the HTTP request bodies the SDK sends (JSON, "
            "base64 data): one more generation is one history segment + the story object; the full document "
            "(story + snapshot) is what a save without segments would send each time."),
    }
