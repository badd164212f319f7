"""The SDK's ImageClient and `fabula image` against the real gateway and image service."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from fabula_sdk.cli import app
from fabula_sdk.errors import InvalidRequestError
from fabula_sdk.image import GeneratedImage, ImageAccepted, ImageClient, ImageFinished, ImageProgress
from fabula_sdk.session_store import SavedSession, SessionStore
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import png_bytes, running_image_service


@pytest.fixture
async def live(tmp_path, tiny_model):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([tiny_model], tmp_path) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
            user = await register_user(client, "sdkartist")
            yield gateway.url, user


OPTIONS = dict(prompt="a red fox", width=64, height=64, steps=2, seed=8, sampler="euler")


async def test_image_client(live) -> None:
    url, user = live

    def run():
        with ImageClient(url, user.token) as ai:
            whole = ai.generate(**OPTIONS, n_images=2)
            single = ai.generate(**OPTIONS)
            events = list(ai.stream(**OPTIONS, preview_every=1))
            archive = ai.generate_zip(**OPTIONS)
            inpainted = ai.generate(**OPTIONS, action="inpaint", image=whole.images[0].png,
                                    mask=png_bytes(Image.new("L", (64, 64), 255)))
            try:
                ai.generate(**{**OPTIONS, "width": 100})
            except InvalidRequestError as error:
                refused = error
            return whole, single, events, archive, inpainted, refused, ai.tokenize("{fox}"), ai.models()

    whole, single, events, archive, inpainted, refused, tokens, models = await asyncio.to_thread(run)
    assert [image.seed for image in whole.images] == [8, 9]
    assert isinstance(events[0], ImageAccepted) and isinstance(events[1], ImageProgress)
    assert isinstance(events[-2], GeneratedImage) and isinstance(events[-1], ImageFinished)
    assert events[-2].png == single.images[0].png
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert opened.read("image_0_8.png") == single.images[0].png
    assert inpainted.images[0].width == 64
    assert refused.field == "width" and refused.status == 400
    assert tokens["prompt"]["chunks"][0]["weights"] == [1.05]
    assert models["models"][0]["name"] == "tiny"


async def test_cli_image_writes_the_png_with_a_progress_bar(live, tmp_path) -> None:
    url, user = live
    home = tmp_path / "home"
    SessionStore(home).save(SavedSession(url=url, username=user.username, user_id=user.user_id, token=user.token,
                                         master_key=os.urandom(32)))

    def run(*args):
        return CliRunner().invoke(app, ["--home", str(home), "image", *args])

    out = tmp_path / "out.png"
    result = await asyncio.to_thread(run, "a red fox", "-o", str(out), "-W", "64", "-H", "64", "-s", "2",
                                     "--seed", "8", "--sampler", "euler")
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout and "denoising" in result.stderr

    def expected():
        with ImageClient(url, user.token) as ai:
            return ai.generate(**OPTIONS).images[0].png

    assert out.read_bytes() == await asyncio.to_thread(expected)
    several = await asyncio.to_thread(run, "a fox", "-o", str(tmp_path / "many.png"), "-W", "64", "-H", "64",
                                      "-s", "1", "-n", "2")
    assert several.exit_code == 0 and (tmp_path / "many-1.png").is_file() and (tmp_path / "many-2.png").is_file()
    bad = await asyncio.to_thread(run, "x", "-W", "100")
    assert bad.exit_code == 1 and "width" in bad.stderr
