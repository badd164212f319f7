"""The editor's side panels and the image panel in Chromium, against the real stack (conftest.py):
memory, author's note, a lorebook entry that triggers and shows in the context viewer, the
generation settings (preset, samplers with their ranges, the sampler order by keyboard and by
drag, stop sequences, seed), all read back by the SDK; illustrating with progress previews, the
picture in the story after a reload (and in the SDK), inpainting with a brush mask; phone width,
keyboard and the two themes. axe-core runs over every panel."""

from __future__ import annotations

import json
import struct

import pytest

from fabula_sdk.documents.content import IllustrationBlock
from tests.web.conftest import axe_check, screenshot, unique
from tests.web.test_editor import new_story, open_story, sdk_client, sign_in, sign_up, type_text, wait_saved


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def sampler_order(page) -> list[str]:
    return page.locator(".sampler-order li").evaluate_all("items => items.map(li => li.dataset.sampler)")


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module")
def panel_writer(browser, base_url):
    username = unique("panels-")
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)
    page = context.new_page()
    sign_up(page, username)
    context.close()
    return username


def test_memory_lorebook_and_settings_are_stored_as_the_sdk_reads_them_and_the_entry_shows_in_the_context(
        new_page, base_url, panel_writer):
    page = new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, panel_writer)
    title = unique("Panels ")
    new_story(page, title)
    type_text(page, "The keeper Aldric climbed the stairs of the old tower.")
    # The story's own token count follows the text once typing pauses.
    page.wait_for_function("() => Number(document.querySelector('.story-tokens').dataset.tokens) > 5")

    memory = unique("MEMORYMARK")
    open_tab(page, "Memory")
    page.get_by_label("Memory text").fill(f"{memory} The tower stands on a cliff.")
    count = page.locator(".token-count")
    page.wait_for_function("() => Number(document.querySelector('.token-count').dataset.tokens) > 3")
    assert "tokens" in count.inner_text()
    screenshot(page, "panel-memory")
    axe_check(page, "memory panel")

    open_tab(page, "Author's note")
    page.get_by_label("Author's note text").fill("Write with dread.")
    page.get_by_label("Author's note text").press("Tab")
    axe_check(page, "author's note panel")

    lore = unique("LOREMARK")
    open_tab(page, "Lorebook")
    page.get_by_role("button", name="New entry").click()
    page.locator('input[name="lore-name"]').fill("Aldric")
    page.get_by_label("Text (inserted into the context)").fill(f"{lore} Aldric has kept the lamp for forty years.")
    page.get_by_label("Keys (one a line)").fill("aldric\nk[e]+per \\w+")
    page.get_by_role("button", name="Test against the story").click()
    result = page.locator(".lore-test")
    assert result.get_attribute("data-active") == "yes"
    # Plain keys match case-insensitively; the regex key only once it is marked as one.
    assert result.locator('li[data-key="aldric"]').get_attribute("data-matched") == "yes"
    assert result.locator('li[data-matched="no"]').count() == 1
    page.get_by_label("Keys are regular expressions").check()
    page.get_by_role("button", name="Test against the story").click()
    assert result.locator('li[data-matched="yes"]').count() == 2
    page.get_by_label("Case sensitive").check()
    page.get_by_role("button", name="Test against the story").click()
    assert result.locator('li[data-key="aldric"]').get_attribute("data-matched") == "no"
    page.get_by_label("Case sensitive").uncheck()
    page.locator('.lore-categories summary').click()
    page.get_by_label("New category").fill("People")
    page.get_by_role("button", name="Add category").click()
    page.locator('select[name="lore-category"]').select_option(label="People")
    page.locator(".lore-entry summary", has_text="Context settings").click()
    page.locator('input[name="lore-budget_priority"]').fill("650")
    screenshot(page, "panel-lorebook")
    axe_check(page, "lorebook panel")
    page.locator('.lorebook [role="status"]:not([data-state="unsaved"]):not([data-state="saving"])').wait_for(state="attached")

    open_tab(page, "Generation")
    page.locator('select[name="preset"] option').nth(1).wait_for(state="attached")
    preset = page.locator('select[name="preset"] option').nth(1).get_attribute("value")
    page.locator('select[name="preset"]').select_option(preset)
    page.locator('input[name="sampling-temperature"]').fill("0.7")
    page.locator('input[name="sampling-top_p"]').fill("0")  # (0, 1]: zero is out of range
    assert page.locator('input[name="sampling-top_p"]').get_attribute("aria-invalid") == "true"
    assert "above 0" in page.locator("#sampling-top_p-hint").inner_text()
    page.locator('input[name="sampling-top_p"]').fill("")
    page.locator('input[name="sampling-top_k"]').fill("40")
    page.locator('input[name="sampling-dry_multiplier"]').fill("0.8")
    page.locator('select[name="sampling-phrase_repetition_penalty"]').select_option("light")
    before = sampler_order(page)
    page.locator(f'.sampler-order li[data-sampler="{before[0]}"]').focus()
    page.keyboard.press("Alt+ArrowDown")
    after_keys = sampler_order(page)
    assert after_keys == [before[1], before[0], *before[2:]]
    page.locator(f'.sampler-order li[data-sampler="{after_keys[-1]}"]').drag_to(page.locator(".sampler-order li").first)
    after_drag = sampler_order(page)
    assert after_drag[0] == after_keys[-1] and sorted(after_drag) == sorted(before)
    page.locator('.sampler-order li[data-sampler="min_p"] input[type=checkbox]').uncheck()
    page.get_by_label("Stop sequences (one a line)").fill("THE END\n***")
    page.get_by_label("Seed (empty = random each time)").fill("42")
    screenshot(page, "panel-generation")
    axe_check(page, "generation panel")
    wait_saved(page)

    panels_box = page.locator(".side-panels").bounding_box()
    page.get_by_role("button", name="Send").click()
    page.locator('.gen-state[data-last="done"]').wait_for(state="attached")
    # The text streamed into the story without moving the panels beside it.
    assert page.locator(".side-panels").bounding_box() == panels_box
    wait_saved(page)
    open_tab(page, "Context")
    row = page.locator('.context-report tr[data-source="lorebook:Aldric"]')
    assert row.get_attribute("data-included") == "yes"
    assert "aldric" in row.inner_text().lower()
    prompt = page.locator(".context-prompt").inner_text()
    assert lore in prompt and memory in prompt and "Write with dread." in prompt
    assert page.locator('.context-report tr[data-source="memory"]').get_attribute("data-included") == "yes"
    screenshot(page, "panel-context")
    axe_check(page, "context viewer")

    client = sdk_client(base_url, panel_writer)
    try:
        store = client.documents
        [entry] = [s for s in store.list_stories() if s.document.title == title]
        story = store.open(entry.id).story
        assert story.memory.text.startswith(memory)
        assert story.authors_note.text == "Write with dread."
        settings = story.settings
        assert settings.service_preset == preset
        assert settings.sampling.temperature == pytest.approx(0.7) and settings.sampling.top_k == 40
        assert settings.sampling.top_p is None
        # The newer samplers' fields: the SDK keeps them under their request names (Sampling.extra).
        assert settings.sampling.extra["dry_multiplier"] == pytest.approx(0.8)
        assert settings.sampling.extra["phrase_repetition_penalty"] == "light"
        assert [step.sampler for step in settings.sampler_order] == after_drag
        assert [step.enabled for step in settings.sampler_order] == [s != "min_p" for s in after_drag]
        assert settings.stop_sequences == ["THE END", "***"]
        assert settings.extra["seed"] == 42
        [book_id] = story.lorebook_ids
        book = store.open_lorebook(book_id).document
        [lore_entry] = book.entries
        [category] = book.categories
        assert lore_entry.name == "Aldric" and lore_entry.text.startswith(lore)
        assert lore_entry.keys == ["aldric", "k[e]+per \\w+"] and lore_entry.regex_keys
        assert lore_entry.category == category.id and category.name == "People"
        assert lore_entry.context_config.budget_priority == 650
    finally:
        client.close()

    page.reload()
    sign_in(page, panel_writer)
    open_story(page, title)
    open_tab(page, "Memory")
    assert page.get_by_label("Memory text").input_value().startswith(memory)
    open_tab(page, "Lorebook")
    page.locator('select[name="lore-entry"]').select_option(label="Aldric")
    assert lore in page.get_by_label("Text (inserted into the context)").input_value()


def test_illustrate_with_progress_then_the_picture_is_in_the_story_after_a_reload_and_inpaint(
        new_page, base_url, panel_writer):
    page = new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, panel_writer)
    title = unique("Illustrated ")
    new_story(page, title)
    type_text(page, "The lamp room glowed over the black sea.")
    page.get_by_role("button", name="Illustrate").click()
    panel = page.locator(".image-panel")
    assert panel.locator(".noise-warning").get_attribute("data-builtin") == "yes"
    assert "noise" in panel.locator(".noise-warning").inner_text()
    prompt = page.get_by_label("Prompt", exact=True)
    assert "lamp room" in prompt.input_value()  # the cursor's paragraph
    prompt.fill("a {lighthouse} at night, [fog], (storm:1.3)")
    page.locator(".prompt-emphasis .w-up").first.wait_for()
    weights = page.locator(".prompt-emphasis span").evaluate_all("s => s.map(x => Number(x.dataset.weight))")
    assert any(w > 1 for w in weights) and any(w < 1 for w in weights) and 1.3 in [round(w, 2) for w in weights]
    assert page.locator(".chunks .chunk").count() >= 1
    assert "/75" in page.locator(".chunks .chunk").first.inner_text()
    page.locator('input[name="width"]').fill("128")
    page.locator('input[name="height"]').fill("128")
    page.locator('input[name="steps"]').fill("4")
    page.locator('input[name="n-images"]').fill("2")
    page.locator('input[name="image-seed"]').fill("7")
    screenshot(page, "image-panel")
    axe_check(page, "image panel")
    page.get_by_role("button", name="Generate").click()
    page.locator(".result-grid .result").nth(1).wait_for()
    page.locator('.image-progress[data-running="no"]').wait_for(state="attached")
    progress = page.locator(".image-progress")
    assert int(progress.get_attribute("data-step")) >= 1
    assert int(progress.get_attribute("data-previews")) >= 1
    screenshot(page, "image-results")
    axe_check(page, "image results")
    page.locator(".result-grid .result input[type=radio]").nth(1).check()
    page.get_by_role("button", name="Insert into the story").click()
    page.locator(".image-panel .ok").wait_for()
    wait_saved(page)
    figure = page.locator(".story-text .illustration-figure")
    figure.locator("img").wait_for()
    first_id = figure.get_attribute("data-image-id")

    page.reload()
    sign_in(page, panel_writer)
    open_story(page, title)
    figure = page.locator(".story-text .illustration-figure")
    page.locator('.story-text .illustration-figure[data-loaded="yes"]').wait_for()
    assert figure.get_attribute("data-image-id") == first_id
    assert figure.locator("img").evaluate("img => img.naturalWidth") == 128
    assert "noise" in figure.locator(".noise-note").inner_text()
    assert '"seed": 8' in figure.locator("pre").text_content()  # the second image: seed + 1
    screenshot(page, "story-with-illustration")
    axe_check(page, "story with an illustration")

    # Inpaint: a brush stroke on the mask, then the inpainted picture replaces the illustration.
    figure.get_by_role("button", name="Edit picture: ").click()
    page.locator('input[name="image-action"][value="inpaint"]').check()
    canvas = page.locator(".mask-canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    assert canvas.get_attribute("data-painted") == "yes"
    screenshot(page, "inpaint-mask")
    axe_check(page, "inpaint")
    page.get_by_role("button", name="Run inpaint").click()
    page.locator(".result-grid .result").first.wait_for()
    page.locator('.image-progress[data-running="no"]').wait_for(state="attached")
    page.get_by_role("button", name="Replace this illustration").click()
    page.locator(".image-panel .ok").wait_for()
    wait_saved(page)
    second_id = page.locator(".story-text .illustration-figure").get_attribute("data-image-id")
    assert second_id and second_id != first_id
    assert page.locator(".story-text .illustration-figure").count() == 1

    # Outpaint: the canvas extended by 64 px on the right, inserted as a second illustration.
    page.locator(".story-text .illustration-figure").get_by_role("button", name="Edit picture: ").click()
    page.locator('input[name="image-action"][value="outpaint"]').check()
    page.locator('input[name="extend-right"]').fill("64")
    page.get_by_role("button", name="Run outpaint").click()
    page.locator(".result-grid .result").first.wait_for()
    page.locator('.image-progress[data-running="no"]').wait_for(state="attached")
    assert page.locator(".result-grid img").first.evaluate("img => img.naturalWidth") == 192
    page.get_by_role("button", name="Insert into the story").click()
    page.locator(".image-panel .ok").wait_for()
    wait_saved(page)
    assert page.locator(".story-text .illustration-figure").count() == 2

    # Variations: img2img from the picture with a new seed; and re-running its own settings.
    page.locator(".story-text .illustration-figure").first.get_by_role("button", name="Edit picture: ").click()
    page.get_by_role("button", name="Variations").click()
    page.locator(".result-grid .result").first.wait_for()
    page.locator('.image-progress[data-running="no"]').wait_for(state="attached")
    assert page.locator(".image-panel .error").count() == 0
    page.locator('.image-progress[data-runs="1"]').wait_for(state="attached")
    page.get_by_role("button", name="Re-run").click()
    page.locator('.image-progress[data-runs="2"]').wait_for(state="attached")
    page.locator(".result-grid .result").first.wait_for()
    assert page.locator(".image-panel .error").count() == 0

    client = sdk_client(base_url, panel_writer)
    try:
        store = client.documents
        [entry] = [s for s in store.list_stories() if s.document.title == title]
        doc = store.open(entry.id)
        blocks = [b for b in doc.history.blocks if isinstance(b, IllustrationBlock)]
        assert second_id in [b.image_id for b in blocks] and len(blocks) == 2
        outpainted = next(b for b in blocks if b.image_id != second_id)
        assert outpainted.settings.width == 192 and outpainted.settings.seed is not None
        kinds = [node.kind.value if hasattr(node.kind, "value") else node.kind for node in doc.history.nodes]
        assert kinds.count("illustration") == 3
        image = store.open_image(second_id)
        assert png_size(image.png) == (128, 128)
        assert json.loads(image.metadata["fabula"])["builtin_model"] is True
        assert max(png_size(store.open_thumbnail(second_id).png)) <= 256
        original = store.open_image(first_id)
        assert json.loads(original.metadata["fabula"])["seed"] == 8
    finally:
        client.close()


def test_phone_width_keyboard_tabs_and_both_themes(new_page, panel_writer):
    page = new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, panel_writer)
    new_story(page, unique("Phone "))
    type_text(page, "A narrow screen.")
    for tab in ("Memory", "Lorebook", "Generation", "Context", "Illustrate"):
        open_tab(page, tab)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        wide = page.evaluate("() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >"
                             " document.documentElement.clientWidth + 0.5).slice(0, 5).map(e => e.tagName + '.' + e.className)")
        assert overflow <= 0, f"the {tab} panel scrolls sideways at 390 px ({overflow} px): {wide}"
    open_tab(page, "Memory")
    screenshot(page, "phone-editor")
    axe_check(page, "editor at phone width")

    # The panel tabs follow the ARIA tabs pattern: arrow keys move between them.
    page.get_by_role("tab", name="Memory").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.textContent") == "Author's note"
    assert page.get_by_role("tab", name="Author's note").get_attribute("aria-selected") == "true"

    background = "() => getComputedStyle(document.body).backgroundColor"
    page.emulate_media(color_scheme="light")
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert light != dark  # prefers-color-scheme is followed
    screenshot(page, "phone-editor-dark")
    axe_check(page, "editor, dark")
    toggle = page.locator(".theme-toggle")
    while toggle.get_attribute("data-theme-choice") != "light":
        toggle.click()
    assert page.evaluate(background) == light  # the writer's pick wins over the system's
    assert page.evaluate("() => document.documentElement.dataset.theme") == "light"
    axe_check(page, "editor, light picked on a dark system")
    page.reload()
    assert page.evaluate("() => document.documentElement.dataset.theme") == "light"


def test_a_field_changed_while_a_save_is_in_flight_is_kept(new_page, base_url, panel_writer):
    """The story write is held by the test until the title is changed again: the second title
    (a top-level field, as the lorebook list a panel adds) must be the one stored in the end."""
    page = new_page()
    sign_in(page, panel_writer)
    first, second = unique("First "), unique("Second ")
    new_story(page, unique("Race "))
    held = []

    def hold(route):
        if route.request.method == "PUT" and not held:
            held.append(route)
        else:
            route.continue_()

    page.route(lambda url: "/user/objects/stories/" in url, hold)
    page.get_by_label("Title").fill(first)
    page.locator('.save-state[data-state="saving"]').wait_for()
    while not held:
        page.wait_for_timeout(50)  # the route handler runs while the page is driven
    page.get_by_label("Title").fill(second)
    held[0].continue_()
    page.locator('.save-state[data-state="saved"]').wait_for()
    page.unroute_all()
    client = sdk_client(base_url, panel_writer)
    try:
        titles = [s.document.title for s in client.documents.list_stories()]
        assert second in titles and first not in titles
    finally:
        client.close()
