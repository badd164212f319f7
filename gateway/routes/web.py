"""The web editor (web/, docs/web.md), served next to the API: `GET /` is its page, never cached
(so a new build is picked up at once), and `GET /assets/<name>` its files, whose names carry a
hash of their content and so are cached for a year. Only these two paths: every API path stays
the API's, and an unknown path is still the API's JSON 404."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from gateway.deps import Settings
from gateway.errors import ApiError
from gateway.settings import GatewaySettings

router = APIRouter(tags=["web"], include_in_schema=False)

IMMUTABLE = "public, max-age=31536000, immutable"
ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Fabula</title></head>
<body><main><h1>The web editor is not built</h1>
<p>This gateway serves the API, but found no built editor in <code>{where}</code>.
Build it with <code>make web</code> (or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>),
or point <code>FABULA_GATEWAY_WEB_DIR</code> at a built <code>dist</code> folder.</p></main></body></html>"""


def web_dir(settings: GatewaySettings) -> Path:
    if settings.web_dir:
        return Path(settings.web_dir)
    return Path(__file__).resolve().parents[2] / "web" / "dist"


@router.get("/", response_class=HTMLResponse)
async def index(settings: Settings) -> Response:
    folder = web_dir(settings)
    page = folder / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT.format(where=folder), status_code=503, headers={"Cache-Control": "no-store"})
    return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/assets/{name}")
async def asset(name: str, settings: Settings) -> Response:
    path = web_dir(settings) / "assets" / name
    if not ASSET_NAME.fullmatch(name) or ".." in name or not path.is_file():
        raise ApiError(404, f"no web editor file named {name!r}", field="name")
    return FileResponse(path, headers={"Cache-Control": IMMUTABLE})
