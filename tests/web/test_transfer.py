"""Import and export in the web library (docs/web.md): the same file imported by the browser and
by the SDK's importers gives the same decrypted documents (Markdown, text, a NovelAI scenario with
its lorebook and preset, a NovelAI lorebook); a Fabula archive exported by the SDK imports in the
browser and one exported from the browser imports with the SDK; a story exported as HTML is the
SDK's HTML export byte for byte, and the EPUB is a valid EPUB holding the story."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from fabula_sdk.exporters import export_story
from fabula_sdk.importers import read_lorebook, read_story, store_story
from fabula_wire import ObjectType
from tests.web.conftest import axe_check, screenshot, unique
from tests.web.test_editor import PASSWORD, new_story, open_story, sdk_client, sign_up, type_text, wait_saved

SCENARIO = {
    "scenarioVersion": 3, "title": "The Salt Road", "description": "Caravans and ${hero}.", "tags": ["desert", "trade"],
    "prompt": "The caravan left at dusk, ${hero} at its head.\n\nNobody spoke.",
    "context": [
        {"text": "The world is a desert.", "contextConfig": {"prefix": "", "suffix": "\n", "tokenBudget": 1,
                                                              "reservedTokens": 0, "budgetPriority": 800,
                                                              "trimDirection": "trimBottom", "insertionType": "newline",
                                                              "maximumTrimType": "sentence", "insertionPosition": 0}},
        {"text": "[Style: terse]", "contextConfig": {"tokenBudget": 0.25, "reservedTokens": 0.5, "budgetPriority": -400,
                                                     "insertionPosition": -4, "trimDirection": "trimTop",
                                                     "someFutureField": {"x": 1.0}}},
    ],
    "storyContextConfig": {"prefix": "", "suffix": "", "tokenBudget": 1, "reservedTokens": 512, "budgetPriority": 0,
                           "trimDirection": "trimTop", "insertionType": "newline", "maximumTrimType": "sentence",
                           "insertionPosition": -1, "allowInsertionInside": False},
    "settings": {"model": "kayra-v1", "preset": "Carefree",
                 "parameters": {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "tail_free_sampling": 1,
                                "repetition_penalty": 1.148, "repetition_penalty_range": 2048.0,
                                "repetition_penalty_frequency": 0, "max_length": 40, "min_length": 1,
                                "order": [{"id": "temperature", "enabled": True}, {"id": "tfs", "enabled": False},
                                          {"id": "top_k", "enabled": True}, {"id": "mirostat", "enabled": False}],
                                "phrase_rep_pen": "medium"},
                 "banBrackets": True, "trimResponses": True},
    "lorebook": {
        "lorebookVersion": 5,
        "entries": [
            {"id": "e-salt", "displayName": "Salt", "text": "Salt is money here.", "keys": ["salt", "brine"],
             "searchRange": 1000, "enabled": True, "forceActivation": False, "keyRelative": False,
             "nonStoryActivatable": False, "category": "c-goods",
             "contextConfig": {"prefix": "", "suffix": "\n", "tokenBudget": 0.1, "reservedTokens": 0, "budgetPriority": 400,
                               "trimDirection": "trimBottom", "insertionType": "newline",
                               "maximumTrimType": "sentence", "insertionPosition": -1},
             "loreBiasGroups": [{"phrases": [], "bias": 0.0}]},
            {"id": "e-hero", "displayName": "Hero", "text": "The hero is tired.", "keys": ["/her(o|oine)/i", "champion"],
             "enabled": False, "forceActivation": True},
            {"id": "e-well", "displayName": "Well", "text": "The well is dry.", "keys": ["/W[ae]ll/", "/oasis/"],
             "nonStoryActivatable": True},
        ],
        "categories": [
            {"id": "c-goods", "name": "Goods", "enabled": True, "createSubcontext": True, "useCategoryDefaults": True,
             "subcontextSettings": {"contextConfig": {"tokenBudget": 200, "budgetPriority": 300}, "text": "", "keys": []},
             "categoryDefaults": {"text": "", "keys": ["trade"], "category": "c-goods",
                                  "contextConfig": {"budgetPriority": 350}},
             "categoryBiasGroups": []},
        ],
        "settings": {"orderByKeyLocations": False},
    },
    "placeholders": [{"key": "hero", "defaultValue": "Amira"}],
    "contextDefaults": {"ephemeralDefaults": []},
}

LOREBOOK = {"lorebookVersion": 5, "entries": [
    {"id": "l-1", "displayName": "Harbour", "text": "The harbour smells of tar.", "keys": ["harbour", "/docks?/"],
     "contextConfig": {"tokenBudget": 0.5, "trimDirection": "doNotTrim"}},
    {"id": "l-2", "displayName": "Lighthouse", "text": "It has been dark for years.", "keys": ["lighthouse"],
     "searchRange": 2000, "keyRelative": True},
], "categories": [], "settings": {"orderByKeyLocations": True}}

MARKDOWN = "---\ntitle: \"The Glass Orchard\"\ntags: [orchard, glass]\n---\n\n# Ignored heading\n\nThe trees rang " \
           "in the wind.\n\n## Part two\n\nSomeone was listening.\n"
TEXT = "A plain story.\r\nWith Windows line ends and a tab\tand ünïcode.\n"


def canonical(data: bytes):
    """JSON that keeps 1.0 apart from 1 (the documents must be the same bytes, not just equal)."""
    return json.loads(data, parse_float=lambda s: ("float", s))


def get_json(client, type, id):
    return canonical(client.get(type, id).plaintext)


def story_documents(client, story_id: str) -> dict:
    """A story's decrypted documents with the values each import draws afresh (ids, times) taken out."""
    story = get_json(client, ObjectType.STORY, story_id)
    content = get_json(client, ObjectType.STORY_CONTENT, story.pop("content_id"))
    for key in ("created_at", "updated_at"):
        story.pop(key)
    for node in content["nodes"]:
        node.pop("created_at")
    lorebooks = [get_json(client, ObjectType.LOREBOOK, id) for id in story.pop("lorebook_ids")]
    preset_id = story["settings"].pop("preset_id")
    preset = get_json(client, ObjectType.PRESET, preset_id) if preset_id else None
    return {"story": story, "content": content, "lorebooks": lorebooks, "preset": preset}


def import_in_browser(page, path: Path, password: str = "") -> None:
    page.get_by_label("Import a file").set_input_files(str(path))
    if password:
        page.get_by_label("The archive's password").fill(password)
    page.get_by_role("button", name="Import", exact=True).click()
    state = page.locator('.transfer-state[data-busy="no"]')
    page.wait_for_function("() => { const s = document.querySelector('.transfer-state');"
                           " return s && s.dataset.busy === 'no' && s.textContent.startsWith('Imported')"
                           " || document.querySelector('.transfer .error'); }")
    errors = page.locator(".transfer .error")
    assert errors.count() == 0, errors.first.inner_text()
    state.wait_for()


def story_ids(client) -> set[str]:
    return {meta.id for meta in client.list(ObjectType.STORY)}


@pytest.fixture
def account(new_page, base_url):
    page = new_page()
    username = unique("transfer-")
    sign_up(page, username)
    client = sdk_client(base_url, username)
    yield page, username, client
    client.close()


@pytest.mark.parametrize("name, data", [
    ("salt-road.scenario", json.dumps(SCENARIO, indent=1).encode()),
    ("glass-orchard.markdown", MARKDOWN.encode()),
    ("plain story.txt", TEXT.encode()),
])
def test_a_story_file_imported_in_the_browser_gives_the_sdks_documents(account, tmp_path, name, data):
    page, _username, client = account
    path = tmp_path / name
    path.write_bytes(data)
    before = story_ids(client)
    import_in_browser(page, path)
    [browser_id] = story_ids(client) - before
    sdk_doc = store_story(client.documents, read_story(data, name))
    assert story_documents(client, browser_id) == story_documents(client, sdk_doc.id)
    if name.endswith(".scenario"):
        screenshot(page, "library-imported")
        axe_check(page, "library with import")


def test_a_novelai_lorebook_imported_in_the_browser_is_the_sdks(account, tmp_path):
    page, _username, client = account
    data = json.dumps(LOREBOOK).encode()
    path = tmp_path / "harbour.lorebook"
    path.write_bytes(data)
    import_in_browser(page, path)
    [browser_id] = [meta.id for meta in client.list(ObjectType.LOREBOOK)]
    sdk_id = client.documents.create_lorebook(read_lorebook(data, "harbour.lorebook")).id
    assert get_json(client, ObjectType.LOREBOOK, browser_id) == get_json(client, ObjectType.LOREBOOK, sdk_id)


def test_a_hostile_lorebook_is_refused_naming_the_field(account, tmp_path):
    page, _username, client = account
    bad = {"lorebookVersion": 5, "entries": [{"id": "x", "text": "t", "keys": ["/(a+)+$/"]},
                                             {"id": "y", "text": "t", "keys": ["k"], "contextConfig": {"trimDirection": "sideways"}}]}
    path = tmp_path / "bad.lorebook"
    path.write_bytes(json.dumps(bad).encode())
    page.get_by_label("Import a file").set_input_files(str(path))
    page.get_by_role("button", name="Import", exact=True).click()
    error = page.locator(".transfer .error")
    error.wait_for()
    assert "entries[0].keys[0]" in error.inner_text()
    assert not list(client.list(ObjectType.LOREBOOK))


def test_an_sdk_archive_imports_in_the_browser(new_page, base_url, account, tmp_path):
    page, _username, client = account
    source_page = new_page()
    source_name = unique("archive-src-")
    sign_up(source_page, source_name)
    marker = unique("ARCHIVED")
    source = sdk_client(base_url, source_name)
    try:
        made = source.documents.create_story(title=f"Archived {marker}", text=f"From the archive {marker}.")
        made.history.generate(" It travelled well.")
        source.documents.save(made)
        archive = tmp_path / "source.tar"
        source.export_archive(archive)
    finally:
        source.close()
    import_in_browser(page, archive, PASSWORD)
    open_story(page, f"Archived {marker}")
    assert page.locator(".story-text").inner_text() == f"From the archive {marker}. It travelled well."
    doc = client.documents.open(made.id)
    assert doc.history.text == f"From the archive {marker}. It travelled well."


def test_export_html_epub_and_an_archive_the_sdk_imports(new_page, base_url, account, tmp_path):
    page, username, client = account
    marker = unique("EXPORTED")
    title = f"Export {marker}"
    new_story(page, title)
    type_text(page, f"# Chapter one\n\nThe {marker} & <friends> set out.\n\nThey walked.")
    page.keyboard.press("Control+Enter")
    page.locator('.gen-state[data-last="done"]').wait_for(state="attached")
    wait_saved(page)
    page.get_by_role("button", name="← Library").click()
    page.get_by_role("heading", name="Your stories").wait_for()
    [story_id] = story_ids(client)

    with page.expect_download() as info:
        page.get_by_role("button", name=f"Export HTML: {title}").click()
    html_path = tmp_path / "story.html"
    info.value.save_as(html_path)
    html = html_path.read_text()
    assert f"The {marker} &amp; &lt;friends&gt; set out." in html and 'class="origin-ai"' in html
    assert html == export_story(client.documents, story_id, "html").decode()

    with page.expect_download() as info:
        page.get_by_role("button", name=f"Export EPUB: {title}").click()
    epub_path = tmp_path / "story.epub"
    info.value.save_as(epub_path)
    with zipfile.ZipFile(epub_path) as book:
        first = book.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert book.read("mimetype") == b"application/epub+zip"
        container = ElementTree.fromstring(book.read("META-INF/container.xml"))
        ns = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf"}
        opf_path = container.find("c:rootfiles/c:rootfile", ns).get("full-path")
        opf = ElementTree.fromstring(book.read(opf_path))
        base = opf_path.rsplit("/", 1)[0]
        hrefs = {item.get("id"): item.get("href") for item in opf.findall("opf:manifest/opf:item", ns)}
        spine = [hrefs[ref.get("idref")] for ref in opf.findall("opf:spine/opf:itemref", ns)]
        chapters = [ElementTree.fromstring(book.read(f"{base}/{href}")) for href in spine]  # each is well-formed XHTML
        text = "".join("".join(chapter.itertext()) for chapter in chapters)
        assert f"The {marker} & <friends> set out." in text and "Chapter one" in text
        assert opf.find("opf:metadata/{http://purl.org/dc/elements/1.1/}title", ns).text == title

    with page.expect_download() as info:
        page.get_by_role("button", name="Export all (archive)").click()
    archive = tmp_path / "account.tar"
    info.value.save_as(archive)
    target_page = new_page()
    target_name = unique("archive-dst-")
    sign_up(target_page, target_name)
    target = sdk_client(base_url, target_name)
    try:
        target.import_archive(archive, PASSWORD)
        doc = target.documents.open(story_id)
        assert marker in doc.history.text and re.search(r"\S", "".join(
            b.text for b in doc.history.blocks if getattr(b, "origin", None) and b.origin.value == "ai"))
    finally:
        target.close()
