"""The web editor in headless Chromium (Debian's, driven by Playwright) against the real stack
(tests/resilience/stack.py: gateway serving web/dist, editor on SQLite, the text service with a
tiny seeded model):

- `first_load_kib_gzip`: every response the first page loads (the sign-in screen, until the
  network is idle), each body gzip-compressed (level 6) as a server would send it, summed.
- `open_1mb_story_ms`: from clicking a story in the library to the editor showing it (fetched,
  decrypted, inflated, the history rebuilt, the text laid out) and the next frame painted, for a
  story of about 1 MB at the head with 5,000 history nodes (bench/documents.py builds it the way
  a writer makes one) stored by the SDK; median of the rounds.
- `keystroke_p95_ms_1mb_story`: typing into that story, each key from its keydown event to the
  first frame painted after the editor applied the keystroke's transaction (the editor marks
  `fabula:transaction` with performance.mark; a rAF loop finds the frame, a message posted from
  it runs after that frame's paint); p95 (and p50) over the keys.
- `ratios.ui_vs_sdk_first_token`: the SDK's time to first token (TextClient.stream, the same
  story's continuation request) ÷ the browser's time from clicking Send to the first AI token
  painted, alternating rounds on one small story.
"""

from __future__ import annotations

import gzip
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import percentile

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("FABULA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "bench web password"
OPEN_ROUNDS = 3
KEYS = 120
TOKEN_ROUNDS = 5
WAIT_MS = 300_000
# The editor's figures before the changes that came from profiling a keystroke (docs/web.md,
# "Benchmark"), kept next to each new run's for comparison; measured by this file at commit f0c92b7.
BEFORE = ("keystroke p95 215 ms (p50 27.6, applied p95 74.6), one paragraph p95 1269 ms (applied 393), "
          "open 465 ms, SDK first token 10.9 ms vs Send → painted 34.4 ms (applied 17.3), ratio 0.317")

_AFTER_PAINT = "new Promise(r => { const c = new MessageChannel(); c.port1.onmessage = r; c.port2.postMessage(0); })"

_OPEN = f"""async (title) => {{
  const link = [...document.querySelectorAll('.story-card a')].find(a => a.textContent === title);
  const t0 = performance.now();
  link.click();
  while (!document.querySelector('.story-text')) await new Promise(r => requestAnimationFrame(r));
  await new Promise(r => requestAnimationFrame(r));
  await {_AFTER_PAINT};
  return performance.now() - t0;
}}"""

_KEYSTROKES = f"""() => {{
  window.fabulaKeys = [];
  document.addEventListener('keydown', (event) => {{
    const t0 = event.timeStamp;
    const frame = () => {{
      const mark = performance.getEntriesByName('fabula:transaction').pop();
      if (mark && mark.startTime >= t0) {{
        const applied = mark.startTime - t0;
        {_AFTER_PAINT}.then(() => window.fabulaKeys.push([performance.now() - t0, applied]));
      }}
      else requestAnimationFrame(frame);
    }};
    requestAnimationFrame(frame);
  }}, true);
}}"""

_SEND = f"""async () => {{
  const aiChars = () => [...document.querySelectorAll('.story-text .origin-ai')].reduce((n, e) => n + e.textContent.length, 0);
  const before = aiChars();
  const send = [...document.querySelectorAll('.send-bar button')].find(b => b.textContent.startsWith('Send'));
  let applied = null;
  const observer = new PerformanceObserver((list) => {{
    for (const e of list.getEntries()) if (e.name === 'fabula:transaction' && applied === null) applied = e.startTime;
  }});
  observer.observe({{type: 'mark'}});
  const t0 = performance.now();
  send.click();
  while (aiChars() === before) await new Promise(r => requestAnimationFrame(r));
  await {_AFTER_PAINT};
  const painted = performance.now() - t0;
  while (applied === null) await new Promise(r => setTimeout(r, 10));
  observer.disconnect();
  return [painted, applied - t0];
}}"""


def paragraphed_history():
    """bench/documents.py's story (the same node mix and size), but with the paragraphs prose has:
    every third continuation starts a new paragraph. The one-paragraph original is measured too."""
    import random

    from bench.documents import NODES, TARGET_TEXT_CHARS, _sentence, _WORDS
    from fabula_sdk.documents import History, Origin, TextBlock

    rng = random.Random(1)
    history = History.new([TextBlock("The keeper climbed the stairs to the lamp room.", Origin.PROMPT)])
    per_generation = max(40, TARGET_TEXT_CHARS // int(NODES * 0.66))
    made = 0
    while len(history) < NODES:
        count = len(history)
        made += 1
        sentence = ("\n" if made % 3 == 0 else "") + _sentence(rng, per_generation).lstrip(" " if made % 3 == 0 else "")
        if count % 13 == 0 and history.node(history.head).parent is not None:
            history.undo()
            history.generate(sentence)
        elif count % 7 == 0:
            text = history.text
            start = rng.randrange(max(1, len(text) - 200), len(text)) if text else 0
            history.edit(start, min(len(text), start + 5), rng.choice(_WORDS))
        elif count % 5 == 0 and history.node(history.head).kind in ("generation", "retry"):
            history.retry(sentence)
        else:
            history.generate(sentence)
    return history


def _keystrokes(page, title: str) -> tuple[list[float], list[float], float]:
    """Type KEYS keys at the end of the story: (keydown → painted, keydown → applied) per key, in ms,
    and the seconds of the autosave that follows."""
    page.evaluate(_OPEN, title)
    page.evaluate(_KEYSTROKES)
    page.locator(".story-text").click()
    page.keyboard.press("Control+End")
    for index in range(KEYS):
        page.keyboard.type("abcdefghij klmnopqrst"[index % 21])
    page.wait_for_function(f"() => window.fabulaKeys.length >= {KEYS}")
    keys = page.evaluate("() => window.fabulaKeys")
    started = time.perf_counter()
    _wait_saved(page)
    save_s = time.perf_counter() - started
    _library(page)
    page.reload()  # the listener goes with the page
    return [k[0] for k in keys], [k[1] for k in keys], save_s


def _sign_up(page, username: str) -> None:
    page.goto("/")
    page.get_by_role("button", name="Create account", exact=True).first.click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_label("Key derivation cost").select_option("floor")
    page.locator("form button[type=submit]").click()
    page.get_by_role("heading", name="Your stories").wait_for()


def _first_load_kib(browser, url: str) -> tuple[float, int]:
    context = browser.new_context(base_url=url)
    page = context.new_page()
    bodies: list[bytes] = []
    page.on("response", lambda response: bodies.append(response.body()) if response.ok else None)
    page.goto("/", wait_until="networkidle")
    page.get_by_label("Username").wait_for()
    context.close()
    return sum(len(gzip.compress(body, 6)) for body in bodies) / 1024, len(bodies)


def _library(page) -> None:
    page.get_by_role("button", name="← Library").click()
    page.get_by_role("heading", name="Your stories").wait_for()


def _wait_saved(page) -> None:
    page.locator('.save-state[data-state="saved"]').wait_for()


def run() -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from bench.documents import NODES, build_history
    from fabula_sdk import FabulaClient
    from fabula_sdk.documents import Story
    from fabula_sdk.documents.store import DocumentStore, StoryDocument, new_id
    from fabula_sdk.text import TextClient, TextPiece
    from fabula_sdk.writing import continuation_request
    from tests.resilience.stack import running_stack

    if not (REPO / "web" / "dist" / "index.html").is_file():
        raise RuntimeError("the web editor is not built: run `make web`")
    if not CHROMIUM.is_file():
        raise RuntimeError(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    history = paragraphed_history()
    one_paragraph = build_history()
    text_chars = len(history.text)
    big_title, flat_title, small_title = "Bench 1 MB", "Bench 1 MB one paragraph", "Bench small"
    with tempfile.TemporaryDirectory(prefix="fabula-bench-web-") as workdir, \
            running_stack(Path(workdir)) as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        first_load_kib, first_load_files = _first_load_kib(browser, stack.url)

        context = browser.new_context(base_url=stack.url, viewport={"width": 1100, "height": 900})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        username = f"bench-{uuid.uuid4().hex[:8]}"
        _sign_up(page, username)
        client = FabulaClient.connect(stack.url)
        client.login(username, PASSWORD)
        store = DocumentStore(client, compact_after=10_000)
        store.save(StoryDocument(id=new_id(), story=Story(content_id=new_id(), title=big_title), history=history))
        store.save(StoryDocument(id=new_id(), story=Story(content_id=new_id(), title=flat_title), history=one_paragraph))
        small = store.create_story(title=small_title, text="The keeper climbed the stairs to the lamp room.")
        small.story.settings.max_new_tokens = 8
        store.save(small)
        page.reload()

        def sign_in() -> None:
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.locator("form button[type=submit]").click()
            page.get_by_role("heading", name="Your stories").wait_for()
            page.get_by_role("link", name=big_title, exact=True).wait_for()

        sign_in()
        open_ms, flat_open_ms = [], []
        for _ in range(OPEN_ROUNDS):
            for title, into in ((big_title, open_ms), (flat_title, flat_open_ms)):
                into.append(page.evaluate(_OPEN, title))
                _wait_saved(page)
                _library(page)
                page.get_by_role("link", name=title, exact=True).wait_for()
        keys_ms, applied_ms, save_after_typing_s = _keystrokes(page, big_title)
        sign_in()
        flat_keys_ms, flat_applied_ms, _ = _keystrokes(page, flat_title)
        sign_in()

        page.get_by_role("link", name=small_title, exact=True).click()
        page.locator(".story-text").wait_for()
        _wait_saved(page)
        sdk_ms, ui_ms, ui_applied_ms = [], [], []
        with TextClient(stack.url, client.transport.token) as ai:
            for _ in range(TOKEN_ROUNDS):
                doc = store.open(small.id)
                body = continuation_request(store, doc, max_new_tokens=8)
                started = time.perf_counter()
                for event in ai.stream(**body):
                    if isinstance(event, TextPiece):
                        sdk_ms.append((time.perf_counter() - started) * 1000)
                        break
                runs = int(page.locator(".gen-state").get_attribute("data-runs"))
                painted, applied = page.evaluate(_SEND)
                ui_ms.append(painted)
                ui_applied_ms.append(applied)
                page.locator(f'.gen-state[data-runs="{runs + 1}"]').wait_for(state="attached")
                _wait_saved(page)
        client.close()
        context.close()
        browser.close()

    figures = {
        "first_load_kib_gzip": first_load_kib,
        "first_load_files": first_load_files,
        "open_1mb_story_ms": statistics.median(open_ms),
        "keystroke_p95_ms_1mb_story": percentile(keys_ms, 0.95),
        "keystroke_p50_ms_1mb_story": percentile(keys_ms, 0.5),
        "keystroke_applied_p95_ms_1mb_story": percentile(applied_ms, 0.95),
        "open_1mb_one_paragraph_ms": statistics.median(flat_open_ms),
        "keystroke_p95_ms_1mb_one_paragraph": percentile(flat_keys_ms, 0.95),
        "keystroke_applied_p95_ms_1mb_one_paragraph": percentile(flat_applied_ms, 0.95),
        "save_after_typing_1mb_story_s": save_after_typing_s,
        "sdk_first_token_ms": statistics.median(sdk_ms),
        "ui_first_token_painted_ms": statistics.median(ui_ms),
        "ui_first_token_applied_ms": statistics.median(ui_applied_ms),
        "story_text_chars": text_chars,
        "history_nodes": NODES,
        "keys": KEYS,
        "load_average": Path("/proc/loadavg").read_text().split()[0],
    }
    return {
        "figures": figures,
        "ratios": {"ui_vs_sdk_first_token": statistics.median(sdk_ms) / statistics.median(ui_ms)},
        "summary": (
            "Headless Chromium (Debian's, Playwright) against the real stack on one machine (gateway serving web/dist, "
            "editor on SQLite, text service with a tiny seeded model). First load: every response of the sign-in "
            f"page, gzip level 6. The 1 MB story: {text_chars:,} characters at the head, {NODES:,} history nodes "
            "(bench/documents.py's mix of continuations, retries, edits and undos, every third continuation a new "
            "paragraph; `..._one_paragraph` is bench/documents.py's story itself, 1 MB without a line break), "
            f"stored by the SDK; opening is click → editor shown → next frame painted (median of {OPEN_ROUNDS}); "
            f"keystrokes: {KEYS} keys typed at its end, keydown → first frame painted after the transaction "
            "(performance marks in the page; `keystroke_applied_...` stops at the transaction applied, before layout and paint); `save_after_typing_1mb_story_s` is the autosave that follows. First "
            f"token: SDK TextClient.stream vs Send → first AI token painted ({TOKEN_ROUNDS} alternating rounds, medians; "
            "`ui_first_token_applied_ms` stops when the editor applied it, before the frame). "
            f"Before the per-key profiling (commit f0c92b7, load average 8.27): {BEFORE}."),
    }
