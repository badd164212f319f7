"""History in the web editor (docs/web.md): Retry makes a branch, Undo / Redo move the head and
survive a reload, the history panel walks and restores branches, a stale save against the SDK's
write becomes a branch (state "conflict"), and the history tree is shared both ways with the SDK."""

from __future__ import annotations

from fabula_sdk.documents.content import NodeKind
from tests.web.conftest import axe_check, screenshot, unique
from tests.web.test_editor import flat, new_story, open_story, sdk_client, sign_in, sign_up, type_text, wait_saved


def story_text(page) -> str:
    return page.locator(".story-text").inner_text()


def ai_text(page) -> str:
    return "".join(page.locator(".story-text .origin-ai").all_inner_texts())


def send_and_wait(page, button: str = "Send") -> None:
    runs = int(page.locator(".gen-state").get_attribute("data-runs"))
    page.get_by_role("button", name=button, exact=button != "Send").first.click()
    page.locator(f'.gen-state[data-runs="{runs + 1}"]').wait_for(state="attached")
    assert page.locator(".gen-state").get_attribute("data-last") == "done"
    wait_saved(page)


def click_and_save(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()
    wait_saved(page)


def reopen(page, username: str, title: str) -> None:
    page.reload()
    sign_in(page, username)
    open_story(page, title)


def open_panel(page):
    page.get_by_role("button", name="History", exact=True).click()
    panel = page.locator(".history-panel")
    panel.wait_for()
    return panel


def kind(node) -> str:
    return node.kind.value if isinstance(node.kind, NodeKind) else node.kind


def test_retry_makes_a_branch_and_undo_redo_survive_a_reload(new_page, base_url):
    page = new_page()
    username, title = unique("history-"), unique("Retry ")
    sign_up(page, username)
    new_story(page, title)
    type_text(page, "The ferry left at dawn.")
    send_and_wait(page)
    assert ai_text(page).strip()
    send_and_wait(page, "Retry")
    retried = story_text(page)
    assert ai_text(page).strip() and retried.startswith("The ferry left at dawn.")

    click_and_save(page, "Undo")
    assert story_text(page) == "The ferry left at dawn." and not ai_text(page)
    reopen(page, username, title)
    assert story_text(page) == "The ferry left at dawn." and not ai_text(page)
    click_and_save(page, "Redo")  # after a reload: the newest child, the retry
    assert story_text(page) == retried
    reopen(page, username, title)
    assert story_text(page) == retried
    page.locator(".story-text").click()
    page.keyboard.press("Control+z")  # the keyboard does the same as the button
    page.locator(".story-text .origin-ai").first.wait_for(state="detached")
    wait_saved(page)
    assert not ai_text(page) and story_text(page) != retried

    client = sdk_client(base_url, username)
    try:
        [entry] = client.documents.list_stories()
        history = client.documents.open(entry.id).history
        retry = next(n for n in history.nodes if kind(n) == "retry")
        generation = next(n for n in history.nodes if kind(n) == "generation")
        assert retry.parent == generation.parent  # a sibling: the branch Retry made
        assert flat(history.text_at(retry.id)) == flat(retried)
        assert history.head not in (retry.id, generation.id)
        assert {flat(history.text_at(leaf)) for leaf in history.leaves()} >= {flat(retried), flat(history.text_at(generation.id))}
    finally:
        client.close()


def test_the_history_panel_walks_and_restores_branches(new_page, base_url):
    page = new_page()
    username, title = unique("panel-"), unique("Panel ")
    sign_up(page, username)
    new_story(page, title)
    type_text(page, "A lamp in the window.")
    send_and_wait(page)
    first = story_text(page)
    send_and_wait(page, "Retry")
    panel = open_panel(page)
    alternatives = panel.locator('[data-list="alternatives"] > li')
    assert alternatives.count() == 2
    assert panel.locator('[data-list="branches"] > li').count() == 2
    screenshot(page, "history-panel")
    axe_check(page, "editor with the history panel")
    generation = panel.locator('[data-list="alternatives"] > li[data-kind="generation"]')
    generation.get_by_role("button").click()
    wait_saved(page)
    assert story_text(page) == first
    assert panel.locator('[data-list="alternatives"] > li[aria-current="step"]').get_attribute("data-kind") == "generation"
    reopen(page, username, title)
    assert story_text(page) == first
    panel = open_panel(page)
    assert panel.locator('[data-list="branches"] > li[aria-current="step"]').get_attribute("data-kind") == "generation"

    client = sdk_client(base_url, username)
    try:
        [entry] = client.documents.list_stories()
        history = client.documents.open(entry.id).history
        assert kind(history.node(history.head)) == "generation" and flat(history.text) == flat(first)
    finally:
        client.close()


def test_a_stale_save_against_the_sdk_becomes_a_branch_and_shows_conflict(new_page, base_url):
    page = new_page()
    username, title = unique("stale-"), unique("Stale ")
    sign_up(page, username)
    new_story(page, title)
    type_text(page, "Two hands on one story.")
    client = sdk_client(base_url, username)
    try:
        [entry] = client.documents.list_stories()
        doc = client.documents.open(entry.id)
        doc.history.generate(" The SDK wrote this.")
        client.documents.save(doc)  # saved first: the browser's change index is now stale
        page.locator(".story-text").click()
        page.keyboard.press("Control+End")
        page.keyboard.type(" The browser typed this.")
        page.locator('.save-state[data-state="conflict"]').wait_for()
        assert story_text(page) == "Two hands on one story. The browser typed this."
        doc = client.documents.open(entry.id)
        assert doc.history.text == "Two hands on one story. The browser typed this."
        leaves = {doc.history.text_at(leaf) for leaf in doc.history.leaves()}
        assert leaves == {"Two hands on one story. The SDK wrote this.", "Two hands on one story. The browser typed this."}
    finally:
        client.close()
    panel = open_panel(page)
    assert panel.locator('[data-list="branches"] > li').count() == 2
    assert "The SDK wrote this." in panel.locator('[data-list="branches"]').inner_text()


def test_the_sdks_branches_show_in_the_panel_and_a_restore_is_read_by_the_sdk(new_page, base_url):
    page = new_page()
    username = unique("sdkbranches-")
    sign_up(page, username)
    title = unique("From the SDK ")
    client = sdk_client(base_url, username)
    try:
        store = client.documents
        doc = store.create_story(title=title, text="The SDK opened.")
        first = doc.history.generate(" Then a first ending.")
        second = doc.history.retry(" Then a second ending.")
        store.save(doc)
        page.reload()
        sign_in(page, username)
        open_story(page, title)
        assert story_text(page) == "The SDK opened. Then a second ending."
        panel = open_panel(page)
        alternatives = panel.locator('[data-list="alternatives"]')
        assert "Then a first ending." in alternatives.inner_text() and "Then a second ending." in alternatives.inner_text()
        panel.locator(f'[data-list="alternatives"] > li[data-node="{first.id}"]').get_by_role("button").click()
        wait_saved(page)
        assert story_text(page) == "The SDK opened. Then a first ending."
        reread = store.open(doc.id)
        assert reread.history.head == first.id and second.id in reread.history.siblings(first.id)
    finally:
        client.close()
