"""The web editor end to end in Chromium (see conftest.py): sign up, write, continue with
streaming, stop, autosave and reload, a second device, the library, the password, the SDK reading
the browser's story and the browser the SDK's, the crypto vectors in the browser, accessibility on
every screen, and no plaintext in the database or the logs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fabula_sdk import FabulaClient
from fabula_sdk.documents.content import Origin, TextBlock
from tests.web.conftest import REPO, axe_check, screenshot, unique

PASSWORD = "correct horse battery staple, in a browser"
LIGHT_COST = "floor"  # the sign-up form's "Lighter" cost: the floor, 2 passes and 64 MiB


def sign_up(page, username: str, password: str = PASSWORD, *, check_screens: bool = False) -> None:
    page.goto("/")
    page.get_by_role("button", name="Create account", exact=True).first.click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Repeat the password").fill(password)
    page.get_by_label("Key derivation cost").select_option(LIGHT_COST)
    if check_screens:
        screenshot(page, "sign-up")
        axe_check(page, "sign-up")
    page.locator("form button[type=submit]").click()
    page.get_by_role("heading", name="Your stories").wait_for()


def sign_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.locator("form button[type=submit]").click()
    page.get_by_role("heading", name="Your stories").wait_for()


def wait_saved(page) -> None:
    page.locator('.save-state[data-state="saved"]').wait_for()


def new_story(page, title: str) -> None:
    page.get_by_role("button", name="New story").click()
    page.locator(".story-text").wait_for()
    page.get_by_label("Title").fill(title)
    wait_saved(page)


def type_text(page, text: str) -> None:
    page.locator(".story-text").click()
    page.keyboard.press("Control+End")
    page.keyboard.type(text)
    wait_saved(page)


def open_story(page, title: str) -> None:
    page.get_by_role("link", name=title).click()
    page.locator(".story-text").wait_for()
    page.locator('.save-state[data-state="saved"]').wait_for()


def flat(text: str) -> str:
    """`text` without whitespace: how the page lays paragraph breaks out is not what is compared."""
    return re.sub(r"\s+", "", text)


def sdk_client(base_url: str, username: str, password: str = PASSWORD) -> FabulaClient:
    client = FabulaClient.connect(base_url)  # the SDK's default floor: the browser's account passes it
    client.login(username, password)
    return client


@pytest.fixture(scope="module")
def writer(browser, base_url):
    """One account with one story written in the browser: text typed, then continued by the model."""
    marker = unique("MARKER")
    username = unique("writer-")
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(120_000)
    page = context.new_page()
    sign_up(page, username, check_screens=True)
    screenshot(page, "library-empty")
    axe_check(page, "library (empty)")
    new_story(page, f"Lighthouse {marker}")
    type_text(page, f"The keeper {marker} climbed the stairs.")
    page.keyboard.press("Control+Enter")
    page.locator('.gen-state[data-last="done"]').wait_for(state="attached")
    wait_saved(page)
    screenshot(page, "editor")
    axe_check(page, "editor")
    ai_text = "".join(page.locator(".story-text .origin-ai").all_inner_texts())
    full_text = page.locator(".story-text").inner_text()
    context.close()
    return {"username": username, "marker": marker, "title": f"Lighthouse {marker}", "ai_text": ai_text,
            "text": full_text}


def test_the_browser_passes_the_crypto_and_format_vectors(new_page):
    page = new_page()
    page.goto("/")
    encryption = (REPO / "docs" / "encryption-vectors.json").read_text()
    formats = (REPO / "docs" / "format-vectors.json").read_text()
    results = page.evaluate("([e, f]) => window.fabulaSelfTest(e, f)", [encryption, formats])
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    names = {r["name"].split()[0] + " " + r["name"].split()[1].split("[")[0] for r in results}
    assert {"encryption kdf", "encryption keystore", "encryption rewrap", "encryption objects", "format derived_keys",
            "format objects", "format history", "format migration"} <= names
    assert len(results) >= 20


def test_writing_and_continuing_streams_ai_text_that_is_marked_and_saved(writer):
    assert writer["marker"] in writer["text"]
    assert writer["ai_text"].strip(), "the continuation was not painted as AI text"
    # The model may write paragraph breaks, which the page shows between paragraphs and the AI
    # spans leave out: compare without whitespace.
    assert flat(writer["text"]).endswith(flat(writer["ai_text"]))


def test_autosaved_text_is_there_after_a_reload(new_page, writer):
    page = new_page()
    sign_in(page, writer["username"])
    open_story(page, writer["title"])
    page.reload()
    sign_in(page, writer["username"])  # the key was in memory only: a reload signs out
    open_story(page, writer["title"])
    text = page.locator(".story-text").inner_text()
    assert writer["marker"] in text
    assert writer["ai_text"].strip() in "".join(page.locator(".story-text .origin-ai").all_inner_texts())


def test_a_second_browser_context_reads_the_story(new_page, writer):
    page = new_page()
    sign_in(page, writer["username"])
    card = page.locator(".story-card", has_text=writer["title"])
    assert writer["marker"] in card.locator(".preview").inner_text()
    open_story(page, writer["title"])
    assert writer["marker"] in page.locator(".story-text").inner_text()


def test_stop_ends_the_stream_mid_way_and_keeps_what_came(new_page, base_url):
    page = new_page()
    username = unique("stopper-")
    sign_up(page, username)
    # The story asks for exactly 400 tokens (no early end of text), set through the SDK: the same
    # story settings the browser sends with its request.
    client = sdk_client(base_url, username)
    try:
        made = client.documents.create_story(title="Stopping", text="Once upon a time")
        made.story.settings.min_new_tokens = made.story.settings.max_new_tokens = 400
        client.documents.save(made)
    finally:
        client.close()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, username)
    open_story(page, "Stopping")
    # The browser receives the stream at 2 kB/s: 400 tokens' events take many seconds to arrive,
    # so Stop, pressed once the first token is painted, always lands mid-stream.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": 2000,
                                                  "uploadThroughput": -1})
    page.get_by_role("button", name="Send").click()
    page.locator(".story-text .origin-ai, .error").first.wait_for(state="attached")  # the first token is painted
    assert not page.locator(".error").count(), page.locator(".error").inner_text()
    page.get_by_role("button", name="Stop").click()
    page.locator('.gen-state[data-last="stopped"]').wait_for(state="attached")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": -1})
    wait_saved(page)
    kept = "".join(page.locator(".story-text .origin-ai").all_inner_texts())
    assert kept
    page.reload()
    sign_in(page, username)
    open_story(page, "Stopping")
    assert "".join(page.locator(".story-text .origin-ai").all_inner_texts()) == kept


def test_the_sdk_reads_the_browsers_story_and_the_browser_opens_the_sdks(new_page, base_url, writer):
    client = sdk_client(base_url, writer["username"])
    try:
        store = client.documents
        [entry] = [s for s in store.list_stories() if s.document.title == writer["title"]]
        doc = store.open(entry.id)
        assert writer["marker"] in doc.history.text
        ai = "".join(b.text for b in doc.history.blocks if isinstance(b, TextBlock) and b.origin == Origin.AI)
        assert flat(ai) and flat(ai) in flat(writer["text"])
        kinds = [node.kind.value if hasattr(node.kind, "value") else node.kind for node in doc.history.nodes]
        assert "generation" in kinds and "edit" in kinds
        sdk_marker = unique("SDKMARK")
        made = store.create_story(title=f"From the SDK {sdk_marker}", text=f"Written by the SDK {sdk_marker}.")
        made.history.generate(" The sea answered.")
        store.save(made)
    finally:
        client.close()
    page = new_page()
    sign_in(page, writer["username"])
    open_story(page, f"From the SDK {sdk_marker}")
    assert f"Written by the SDK {sdk_marker}. The sea answered." in page.locator(".story-text").inner_text()
    assert "The sea answered." in "".join(page.locator(".story-text .origin-ai").all_inner_texts())


def test_library_search_sort_favourite_duplicate_and_delete(new_page):
    page = new_page()
    sign_up(page, unique("librarian-"))
    for title in ("Alpha harbour", "Beta mountain"):
        new_story(page, title)
        type_text(page, f"{title} text.")
        page.get_by_role("button", name="← Library").click()
        page.get_by_role("heading", name="Your stories").wait_for()
    page.get_by_label("Search").fill("mountain")
    expect_titles(page, ["Beta mountain"])
    page.get_by_label("Search").fill("")
    page.get_by_label("Sort by").select_option("title")
    expect_titles(page, ["Alpha harbour", "Beta mountain"])
    page.get_by_role("button", name="Favourite: Alpha harbour").click()
    page.locator('button[aria-label="Favourite: Alpha harbour"][aria-pressed="true"]').wait_for()
    page.get_by_label("Favourites only").check()
    expect_titles(page, ["Alpha harbour"])
    page.get_by_label("Favourites only").uncheck()
    page.get_by_role("button", name="Duplicate: Beta mountain").click()
    page.get_by_role("link", name="Beta mountain (copy)").wait_for()
    screenshot(page, "library")
    axe_check(page, "library")
    page.get_by_role("button", name="Delete: Alpha harbour").click()
    dialog = page.get_by_role("alertdialog")
    screenshot(page, "library-delete-confirmation")
    axe_check(page, "delete confirmation")
    dialog.get_by_role("button", name="Cancel").click()
    expect_titles(page, ["Alpha harbour", "Beta mountain", "Beta mountain (copy)"])
    page.get_by_role("button", name="Delete: Alpha harbour").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
    expect_titles(page, ["Beta mountain", "Beta mountain (copy)"])
    open_story(page, "Beta mountain (copy)")
    assert "Beta mountain text." in page.locator(".story-text").inner_text()


def expect_titles(page, titles: list[str]) -> None:
    page.wait_for_function("(want) => JSON.stringify([...document.querySelectorAll('.story-card h2')].map(h => h.innerText))"
                           " === JSON.stringify(want)", arg=titles)


def test_change_password_sign_out_and_in_again(new_page):
    page = new_page()
    username = unique("changer-")
    sign_up(page, username)
    new_story(page, "Kept across passwords")
    type_text(page, "Still readable.")
    page.get_by_role("button", name="← Library").click()
    page.get_by_role("button", name="Account").click()
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a brand new passphrase")
    page.get_by_label("Repeat the new password").fill("a brand new passphrase")
    screenshot(page, "account")
    axe_check(page, "account")
    page.get_by_role("button", name="Change password").click()
    page.get_by_text("Password changed.").wait_for()
    page.get_by_role("button", name="← Library").click()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username").wait_for()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    page.get_by_role("alert").filter(has_text="Wrong username or password").wait_for()
    screenshot(page, "sign-in-refused")
    axe_check(page, "sign-in")
    sign_in(page, username, "a brand new passphrase")
    open_story(page, "Kept across passwords")
    assert "Still readable." in page.locator(".story-text").inner_text()


def test_the_database_and_the_logs_hold_no_plaintext_typed_in_the_browser(writer, stack_dir: Path):
    files = [path for path in stack_dir.rglob("*") if path.is_file() and (path.suffix == ".log" or "editor.db" in path.name)]
    assert any("editor.db" in path.name for path in files)
    marker = writer["marker"].encode()
    for path in files:
        assert marker not in path.read_bytes(), f"{path.name} holds text typed in the browser"


def test_the_gateway_serves_the_editor_next_to_the_api(base_url):
    import httpx

    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    assets = re.findall(r'/assets/[A-Za-z0-9._-]+', page.text)
    assert assets
    for asset in assets:
        answer = httpx.get(base_url + asset)
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert httpx.get(base_url + "/assets/nothing-here.js").status_code == 404
    assert httpx.get(base_url + "/health/live").status_code == 200
    assert httpx.get(base_url + "/no-such-api").headers["content-type"].startswith("application/json")


def test_the_default_argon2id_cost_runs_in_the_browser(new_page):
    """The standard cost (3 passes, 256 MiB) that new accounts get, in libsodium's WebAssembly."""
    page = new_page()
    username = unique("standard-")
    page.goto("/")
    page.get_by_role("button", name="Create account", exact=True).first.click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    assert page.get_by_label("Key derivation cost").input_value() == "default"
    page.locator("form button[type=submit]").click()
    page.get_by_role("heading", name="Your stories").wait_for()
    import httpx

    salt = httpx.post(page.url.split("#")[0].rstrip("/") + "/user/salt", json={"username": username}).json()
    assert salt["kdf"] == {"opslimit": 3, "memlimit": 268435456}


def test_typing_inside_ai_text_makes_edited_text_and_after_it_user_text(new_page, base_url):
    page = new_page()
    username = unique("editor-")
    sign_up(page, username)
    client = sdk_client(base_url, username)
    try:
        made = client.documents.create_story(title="Origins", text="Opening.")
        made.history.generate(" The sea was black.")
        client.documents.save(made)
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, username)
        open_story(page, "Origins")
        page.locator(".story-text").click()
        page.keyboard.press("Control+End")
        page.keyboard.type(" Mine.")  # right after AI text: the writer's own
        for _ in range(len(" black. Mine.")):
            page.keyboard.press("ArrowLeft")
        page.keyboard.type("very")  # inside AI text: edited AI text
        wait_saved(page)
        assert page.locator(".story-text .origin-edit").inner_text() == "very"
        doc = client.documents.open(made.id)
        blocks = [(b.origin.value, b.text) for b in doc.history.blocks if isinstance(b, TextBlock)]
        assert blocks == [("prompt", "Opening."), ("ai", " The sea was"), ("edit", "very"), ("ai", " black."),
                          ("user", " Mine.")]
    finally:
        client.close()


def test_a_stale_save_becomes_a_branch_and_loses_nothing(new_page, base_url):
    first, second = new_page(), new_page()
    username = unique("twodevices-")
    sign_up(first, username)
    new_story(first, "Shared")
    type_text(first, "Common start.")
    sign_in(second, username)
    open_story(second, "Shared")
    type_text(first, " First device.")
    second.locator(".story-text").click()
    second.keyboard.press("Control+End")
    second.keyboard.type(" Second device.")
    second.locator('.save-state[data-state="conflict"]').wait_for()
    assert second.locator(".story-text").inner_text() == "Common start. Second device."
    client = sdk_client(base_url, username)
    try:
        [entry] = client.documents.list_stories()
        doc = client.documents.open(entry.id)
        assert doc.history.text == "Common start. Second device."
        leaves = {doc.history.text_at(leaf) for leaf in doc.history.leaves()}
        assert leaves == {"Common start. First device.", "Common start. Second device."}
    finally:
        client.close()


def test_remember_this_device_is_opt_in_and_sign_out_forgets(new_page):
    page = new_page()
    username = unique("remember-")
    sign_up(page, username)
    assert page.evaluate("() => Object.keys(localStorage)") == []  # nothing kept unless asked
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Remember this device", exact=False).check()
    page.locator("form button[type=submit]").click()
    page.get_by_role("heading", name="Your stories").wait_for()
    assert page.evaluate("() => Object.keys(localStorage)") == ["fabula.rememberedDevice"]
    page.reload()
    page.get_by_role("heading", name="Your stories").wait_for()  # signed in without the password
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username").wait_for()
    assert page.evaluate("() => Object.keys(localStorage)") == []
    page.reload()
    page.get_by_label("Username").wait_for()


def test_a_cost_below_the_floor_is_refused_before_anything_is_derived_or_sent(new_page, base_url):
    from fabula_sdk import MINIMUM_KDF

    username = unique("cheap-")
    client = FabulaClient.connect(base_url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
    try:
        client.register(username, PASSWORD)  # this stack's editor accepts libsodium's minimum cost
    finally:
        client.close()
    page = new_page()
    sent = []
    page.on("request", lambda request: sent.append(request.url))
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "1 passes and 8192 bytes, below this client's floor of 2 passes and 67108864 bytes" in alert.inner_text()
    assert any(url.endswith("/user/salt") for url in sent)
    assert not any(url.endswith("/user/login") for url in sent)
