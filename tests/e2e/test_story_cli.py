"""`fabula stories / lorebooks / presets` against the whole stack — gateway, editor (SQLite and
PostgreSQL), the text service and the image service with its built-in model — as a writer uses
them: import a lorebook, make a preset and a story, continue, retry, undo, redo, restore a
branch, illustrate, export for readers; then the stored documents are checked through the SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ebooklib import ITEM_IMAGE, epub
from typer.testing import CliRunner

from fabula_sdk import FabulaClient, MINIMUM_KDF
from fabula_sdk.cli import app
from fabula_sdk.documents.content import IllustrationBlock, NodeKind, Origin, TextBlock
from fabula_sdk.documents.store import DocumentStore
from fabula_sdk.exporters import NOISE_NOTE
from tests.e2e.conftest import PASSWORD, in_thread

FIXTURES = Path(__file__).parents[1] / "fixtures" / "importers"


@pytest.fixture
def fabula(ai_gateway, tmp_path):
    env = {"FABULA_URL": ai_gateway.url, "FABULA_HOME": str(tmp_path / "home"), "FABULA_PASSWORD": PASSWORD,
           "FABULA_KDF_OPSLIMIT": "1", "FABULA_KDF_MEMLIMIT": "8192", "FABULA_KDF_FLOOR_FOR_TESTS": "1"}

    def run(*args: str, ok: bool = True):
        result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, f"fabula {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    return run


async def test_writing_a_story_from_the_command_line(fabula, ai_gateway, tmp_path):
    def scenario():
        fabula("register", "-u", "writer")
        lorebook = fabula("lorebooks", "import", str(FIXTURES / "dragons.lorebook")).stdout.strip()
        assert "imported 3 entries and 1 categories" in fabula("lorebooks", "import", str(
            FIXTURES / "dragons.lorebook")).stderr
        listing = fabula("lorebooks", "list").stdout
        assert lorebook in listing and "3 entries" in listing
        shown = fabula("lorebooks", "show", lorebook).stdout
        assert "Vyrmathrax" in shown and "[regex, cascading]" in shown and "category Creatures [sub-context]" in shown
        exported = tmp_path / "dragons.json"
        fabula("lorebooks", "export", lorebook, "-o", str(exported))
        assert json.loads(exported.read_text())["format"] == "fabula-lorebook"
        again = fabula("lorebooks", "import", str(exported)).stdout.strip()
        assert fabula("lorebooks", "show", again, "--json").stdout == fabula("lorebooks", "show", lorebook,
                                                                              "--json").stdout
        hostile = tmp_path / "hostile.lorebook"
        hostile.write_text(json.dumps({"lorebookVersion": 5, "entries": [{"text": "x", "keys": ["/(a+)+$/"]}]}))
        refused = fabula("lorebooks", "import", str(hostile), ok=False)
        assert refused.exit_code == 1 and "entries[0].keys[0]" in refused.stderr and "too long" in refused.stderr
        assert fabula("lorebooks", "list").stdout.count("\n") == 3  # nothing of the hostile file was stored

        preset = fabula("presets", "new", "Calm", "--temperature", "0.7", "--top-k", "20", "--order",
                        "temperature,top_k", "-n", "6").stdout.strip()
        assert "Calm" in fabula("presets", "list").stdout
        assert json.loads(fabula("presets", "show", preset).stdout)["sampling"]["top_k"] == 20
        bad_order = fabula("presets", "new", "Bad", "--order", "temperature,warp", ok=False)
        assert bad_order.exit_code == 1 and "warp" in bad_order.stderr

        story = fabula("stories", "new", "--title", "The Keep", "--text", "The dragon Vyrmathrax slept.",
                       "--memory", "The keeper is old.", "--note", "[ Style: slow ]", "--lorebook", lorebook,
                       "--preset", preset).stdout.strip()
        first = fabula("stories", "continue", story, "--seed", "1", "--show-context")
        assert "[saved as node 1]" in first.stderr
        assert "memory" in first.stderr and "Vyrmathrax" in first.stderr  # the context report, entry by entry
        fabula("stories", "retry", story, "--seed", "2", "-n", "4")
        assert "head: node 0" in fabula("stories", "undo", story).stdout
        assert "head: node 2" in fabula("stories", "redo", story).stdout
        assert "head: node 1" in fabula("stories", "checkout", story, "1").stdout
        branches = fabula("stories", "branches", story).stdout.splitlines()
        assert [line.split("\t")[0] for line in branches] == ["* 1", "  2"]
        image_id = fabula("stories", "illustrate", story, "--prompt", "a sleeping red dragon", "-W", "64", "-H", "64",
                          "--steps", "2", "--seed", "3").stdout.strip()
        shown = fabula("stories", "show", story, "--marks", "--details").stdout
        assert "title: The Keep" in shown and "memory: The keeper is old." in shown
        assert "[[" in shown and f"[image {image_id}: a sleeping red dragon]" in shown

        page = tmp_path / "keep.html"
        fabula("stories", "export", story, "-o", str(page))
        html = page.read_text("utf-8")
        assert 'data-origin="ai"' in html and "data:image/png;base64," in html and NOISE_NOTE in html
        book = tmp_path / "keep.epub"
        fabula("stories", "export", story, "-o", str(book), "--author", "Writer")
        assert len(list(epub.read_epub(str(book)).get_items_of_type(ITEM_IMAGE))) == 1

        scenario_id = fabula("stories", "import", str(FIXTURES / "the-keep.scenario")).stdout.strip()
        assert "${name} climbed" in fabula("stories", "pull", scenario_id).stdout
        return story, lorebook, preset, image_id, first.stdout, ai_gateway.url

    story, lorebook, preset, image_id, first_output, url = await in_thread(scenario)

    def check():
        client = FabulaClient.connect(url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        try:
            client.login("writer", PASSWORD)
            store = DocumentStore(client)
            doc = store.open(story)
            kinds = [node.kind for node in doc.history.nodes]
            assert kinds == [NodeKind.ROOT, NodeKind.GENERATION, NodeKind.RETRY, NodeKind.ILLUSTRATION]
            assert doc.history.siblings(1) == [1, 2] and doc.history.head == 3
            # What `continue` printed is what it saved (the printout ends with a newline).
            assert doc.history.text_at(1) == "The dragon Vyrmathrax slept." + first_output.removesuffix("\n")
            assert doc.story.memory.text == "The keeper is old." and doc.story.authors_note.text == "[ Style: slow ]"
            assert doc.story.lorebook_ids == [lorebook] and doc.story.settings.preset_id == preset
            blocks = doc.blocks
            assert isinstance(blocks[0], TextBlock) and blocks[0].origin == Origin.PROMPT
            assert isinstance(blocks[1], TextBlock) and blocks[1].origin == Origin.AI
            illustration = blocks[-1]
            assert isinstance(illustration, IllustrationBlock) and illustration.image_id == image_id
            assert illustration.settings.seed == 3 and illustration.settings.model == "tiny-sd"
            picture = store.open_image(image_id)
            assert json.loads(picture.metadata["fabula"])["builtin_model"] is True
            assert max(store.open_thumbnail(image_id).size) <= 256
        finally:
            client.close()

    await in_thread(check)
