"""A whole story survives the trip: written through the SDK (continuations from the text service,
illustrations from the image service's built-in model), stored by the editor on one back end,
exported as an archive, imported into a second account on a server with the other back end
(SQLite → PostgreSQL, PostgreSQL → SQLite), and read back through the SDK — every decrypted
document equal, byte for byte. The context report of a request built from the imported story
names every part with its reason."""

from __future__ import annotations

import pytest

from fabula_sdk import FabulaClient, MINIMUM_KDF
from fabula_sdk.documents.content import IllustrationBlock, NodeKind
from fabula_sdk.documents.context import ContextConfig
from fabula_sdk.documents.lorebook import Lorebook, LorebookCategory, LorebookEntry
from fabula_sdk.documents.preset import Preset, SamplerName, SamplerStep, Sampling, complete_sampler_order
from fabula_sdk.documents.store import DocumentStore
from fabula_sdk.types import ObjectType
from fabula_sdk.text import TextClient
from fabula_sdk.writing import StoryWriter, continuation_request
from services.editor.embedded import embedded_editor, fast_settings
from tests.conftest import fresh_postgres_schema
from tests.e2e.conftest import PASSWORD, in_thread
from tests.integration.gateway.harness import gateway_settings, serve_gateway

SMALL_PICTURE = dict(width=64, height=64, steps=2)


def places_lorebook() -> Lorebook:
    """One lorebook with a cascading entry: Lamp's key is only in Keep's text."""
    return Lorebook(name="Places", entries=[
        LorebookEntry(id="keep", name="Keep", text="The keep has a lamp that never goes out.", keys=["keep"]),
        LorebookEntry(id="lamp", name="Lamp", text="The lamp burns whale oil.", keys=["lamp"],
                      cascading_activation=True),
        LorebookEntry(id="sea", name="Sea", text="The sea is grey.", keys=["ocean"], scan_depth_chars=500),
    ])


def people_lorebook() -> Lorebook:
    """One lorebook with a category that builds a sub-context."""
    people = LorebookCategory(id="people", name="People", create_subcontext=True,
                              subcontext_config=ContextConfig(prefix="[ People: ", suffix=" ]\n", budget_priority=450))
    return Lorebook(name="People", categories=[people], entries=[
        people.new_entry(id="mara", name="Mara", text="Mara is the keeper's daughter.", keys=["Mara"]),
        people.new_entry(id="ghost", name="Ghost", text="A ghost walks the stairs.", keys=["stairs"], disabled=True),
        LorebookEntry(id="regex", name="Storm", text="Storms come from the west.", keys=[r"storm(s|y)?\b"],
                      regex_keys=True, case_sensitive=True, always_on=True),
    ])


def write_story(client: FabulaClient, url: str) -> str:
    store = DocumentStore(client)
    preset = store.create_preset(Preset(name="Steady", sampling=Sampling(temperature=0.8, top_k=30),
                                        sampler_order=complete_sampler_order([SamplerStep(SamplerName.TOP_K),
                                                                              SamplerStep(SamplerName.TEMPERATURE)]),
                                        max_new_tokens=6))
    places = store.create_lorebook(places_lorebook())
    people = store.create_lorebook(people_lorebook())
    doc = store.create_story(title="The Keep", text="Mara climbed the stairs of the keep.",
                             lorebook_ids=[places.id, people.id])
    doc.story.memory.text = "The keeper is old and the year is 1820."
    doc.story.authors_note.text = "[ Style: slow, gothic ]"
    doc.story.settings.preset_id = preset.id
    doc.story.tags, doc.story.favorite, doc.story.description = ["sea", "gothic"], True, "A lighthouse story."
    store.save(doc)
    writer = StoryWriter(store, url, client.transport.token)  # type: ignore[attr-defined]

    def generate(**options) -> None:
        for _ in writer.continue_story(doc, **options):
            pass

    generate(seed=1)                       # node 1: generation
    generate(retry=True, seed=2)           # node 2: a retry, sibling of 1
    generate(retry=True, seed=3)           # node 3: another
    doc.history.undo()                     # back to the root
    store.save(doc)
    generate(seed=4)                       # node 4: a new generation under the root
    writer.illustrate(doc, "a lighthouse at night", caption="The light", seed=5, **SMALL_PICTURE)
    generate(seed=6)
    writer.illustrate(doc, "the stairs", seed=7, **SMALL_PICTURE)
    doc.history.undo()                     # the second picture undone...
    doc.history.redo()                     # ...and redone
    store.save(doc)
    doc.history.write(" She lit the light.")
    writer.illustrate(doc, "a bright light", seed=8, at=0, **SMALL_PICTURE)
    doc.history.checkout(2)                # restore an old branch, then come back
    store.save(doc)
    doc.history.checkout(len(doc.history) - 1)
    store.save(doc)
    return doc.id


def decrypted_documents(client: FabulaClient) -> dict[tuple[str, str], bytes]:
    return {(type.value, meta.id): client.get(type, meta.id).plaintext
            for type in ObjectType for meta in client.list(type)}


@pytest.fixture
async def other_server(database, tmp_path):
    """A second editor + gateway on the other storage back end than `database`'s."""
    async def serve(url: str):
        async with embedded_editor(fast_settings(url)) as editor:
            async with serve_gateway(gateway_settings(editor.address)) as gateway:
                yield gateway

    if database.is_sqlite:
        with fresh_postgres_schema() as url:
            async for gateway in serve(url):
                yield gateway
    else:
        async for gateway in serve(f"sqlite:///{tmp_path / 'other.db'}"):
            yield gateway


async def test_story_survives_export_and_import_bit_for_bit(ai_gateway, other_server, database, tmp_path):
    archive = tmp_path / "alice.tar"

    def alice_side():
        alice = FabulaClient.connect(ai_gateway.url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        alice.register("alice", PASSWORD)
        story_id = write_story(alice, ai_gateway.url)
        documents = decrypted_documents(alice)
        # Every object is in the editor's database (as ciphertext only).
        stored = {(type.value, id) for type, id in
                  ((ObjectType.parse(t), i) for t, i in documents)}
        for type, id in stored:
            assert database.object_data(alice.user_id, ObjectType.parse(type), id)
        alice.export_archive(archive)
        return alice, story_id, documents

    alice, story_id, documents = await in_thread(alice_side)
    kinds = {type for type, _ in documents}
    assert kinds == {"stories", "storycontent", "lorebooks", "presets", "images"}
    assert sum(1 for type, id in documents if type == "images" and not id.endswith("_thumb")) == 3

    def bob_side():
        bob = FabulaClient.connect(other_server.url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        try:
            bob.register("bob", "bob's own password")
            bob.import_archive(archive, PASSWORD)
            return decrypted_documents(bob), bob
        except Exception:
            bob.close()
            raise

    imported, bob = await in_thread(bob_side)
    try:
        assert imported.keys() == documents.keys()
        for key, plaintext in documents.items():
            assert imported[key] == plaintext, f"{key} differs after the trip"

        def compare():
            mine, theirs = DocumentStore(alice).open(story_id), DocumentStore(bob).open(story_id)
            assert theirs.story.to_bytes() == mine.story.to_bytes()
            assert [node.to_json() for node in theirs.history.nodes] == [node.to_json() for node in mine.history.nodes]
            assert theirs.history.head == mine.history.head and theirs.text == mine.text
            history = theirs.history
            assert [node.kind for node in history.nodes].count(NodeKind.RETRY) == 2
            assert history.siblings(1) == [1, 2, 3, 4]
            pictures = [block for node in history.nodes for op in node.ops for block in op.blocks
                        if isinstance(block, IllustrationBlock)]
            assert len(pictures) == 3
            for block in pictures:
                assert DocumentStore(bob).open_image(block.image_id).png == DocumentStore(alice).open_image(
                    block.image_id).png
            return theirs

        theirs = await in_thread(compare)

        def context_report():
            store = DocumentStore(bob)
            body = continuation_request(store, theirs, max_new_tokens=2, seed=9)
            with TextClient(ai_gateway.url, alice.transport.token) as ai:  # type: ignore[attr-defined]
                return ai.generate(**body).context_report

        report = await in_thread(context_report)
    finally:
        alice.close()
        bob.close()
    rows = {row["source"]: row for row in report.entries}
    assert set(rows) == {"memory", "authors_note", "story", "lorebook:Keep", "lorebook:Lamp", "lorebook:Sea",
                         "lorebook:Mara", "lorebook:Ghost", "lorebook:Storm", "subcontext:People"}
    assert all(row["reason"] for row in report.entries)
    assert rows["lorebook:Keep"]["included"] and rows["lorebook:Keep"]["reason"].startswith("key 'keep' matched")
    assert rows["lorebook:Lamp"]["included"] and "cascade from entry 'Keep'" in rows["lorebook:Lamp"]["reason"]
    assert not rows["lorebook:Sea"]["included"] and rows["lorebook:Sea"]["reason"].startswith("no key matched")
    assert not rows["lorebook:Ghost"]["included"] and rows["lorebook:Ghost"]["reason"] == "disabled"
    assert rows["lorebook:Storm"]["reason"].startswith("always on")
    assert rows["lorebook:Mara"]["included"] and rows["lorebook:Mara"]["reason"].startswith("key 'Mara' matched")
    assert rows["subcontext:People"]["included"]
    for source in ("memory", "authors_note", "story"):
        assert rows[source]["included"], rows[source]
    assert "The keeper is old" in report.prompt and "[ People: " in report.prompt
