"""The web editor in a real browser: Debian's Chromium driven by Playwright (its driver comes in
the PyPI wheel; no browser is downloaded), against the real stack (tests/resilience/stack.py:
editor on SQLite, text service with a tiny seeded model, image service with the built-in model,
the gateway serving web/dist), started once for the whole session, as is the browser.

Helpers: `axe_check` runs axe-core (web/node_modules) in the page and fails on serious or critical
violations; `screenshot` writes build/web-artifacts/<name>.png (gitignored, kept by CI)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.resilience.stack import running_stack

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("FABULA_CHROMIUM", "/usr/bin/chromium"))
DIST = REPO / "web" / "dist"
AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO / "build" / "web-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# A browser wait that would only ever be reached by a hang (the machine is shared and slow).
WAIT_MS = 120_000


@pytest.fixture(scope="session")
def web_stack(tmp_path_factory):
    if not (DIST / "index.html").is_file() or not AXE.is_file():
        pytest.fail("the web editor is not built: run `make web` (make test does it)")
    workdir = tmp_path_factory.mktemp("web-stack")
    with running_stack(workdir) as stack:
        yield stack, workdir


@pytest.fixture(scope="session")
def base_url(web_stack) -> str:
    return web_stack[0].url


@pytest.fixture(scope="session")
def stack_dir(web_stack) -> Path:
    return web_stack[1]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, base_url):
    """Pages in fresh browser contexts (separate storage: a second device), closed after the test."""
    contexts, errors = [], []

    def make():
        context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 900})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def axe_check(page, screen: str) -> None:
    """No serious or critical accessibility violation on the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    violations = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                               ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))")
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on the {screen} screen:\n{json.dumps(bad, indent=1)}"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
