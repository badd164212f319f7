"""The gateway's web editor routes (gateway/routes/web.py) against a built folder made here: the
page is never cached, hashed assets are immutable, nothing outside assets/ is served, and a
missing build says how to make one."""

from __future__ import annotations

import httpx
import pytest

from gateway.main import create_app
from gateway.settings import GatewaySettings

NOWHERE = "127.0.0.1:1"


def _client(web_dir) -> httpx.AsyncClient:
    settings = GatewaySettings(editor_address=NOWHERE, text_address=NOWHERE, image_address=NOWHERE, web_dir=str(web_dir))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://gateway")


@pytest.fixture
def built(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<!doctype html><script src="/assets/index-Ab12.js"></script>')
    (tmp_path / "assets" / "index-Ab12.js").write_text("console.log('editor')")
    (tmp_path / "secret.txt").write_text("not an asset")
    return tmp_path


async def test_the_page_is_never_cached_and_assets_are_immutable(built):
    async with _client(built) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "/assets/index-Ab12.js" in page.text
        assert page.headers["cache-control"] == "no-cache"
        asset = await client.get("/assets/index-Ab12.js")
        assert asset.status_code == 200 and asset.text == "console.log('editor')"
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "javascript" in asset.headers["content-type"]


@pytest.mark.parametrize("path", ["/assets/missing.js", "/assets/..%2Fsecret.txt", "/assets/../secret.txt", "/secret.txt"])
async def test_only_built_assets_are_served(built, path):
    async with _client(built) as client:
        answer = await client.get(path)
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/json")


async def test_a_missing_build_says_how_to_build_it(tmp_path):
    async with _client(tmp_path / "nothing") as client:
        page = await client.get("/")
        assert page.status_code == 503
        assert "make web" in page.text and "FABULA_GATEWAY_WEB_DIR" in page.text
        # The API is still the API.
        assert (await client.get("/health/live")).status_code == 200
