"""Hires fix, upscale, enhance, variations, metadata with signatures and tag suggestions through the
real gateway (native HTTP and the A1111 png-info route), the SDK and the `fabula` CLI, against the
image service on the tiny model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from fabula_sdk.cli import app
from fabula_sdk.errors import InvalidRequestError
from fabula_sdk.image import ImageClient
from fabula_sdk.session_store import SavedSession, SessionStore
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import noise_image, png_bytes, running_image_service

BODY = {"prompt": "a lighthouse, {storm}", "width": 64, "height": 64, "steps": 2, "seed": 42, "sampler": "euler"}


@pytest.fixture
async def live(tmp_path, tiny_model):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([tiny_model], tmp_path) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            user = await register_user(client, "depthartist")
            client.headers.update(user.headers)
            yield client, gateway.url, user


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_of(result: dict, index: int = 0) -> bytes:
    return base64.b64decode(result["images"][index]["png"])


async def test_http_hires_metadata_round_trip_and_signature(live) -> None:
    client, _, _ = live
    body = {**BODY, "hires": {"scale": 2, "steps": 2, "strength": 0.5, "upscaler": "lanczos"},
            "noise_schedule": "polyexponential", "schedule_rho": 2, "dynamic_thresholding": 0.95}
    made = await client.post("/ai/generate-image", json=body)
    assert made.status_code == 200, made.text
    png = png_of(made.json())
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    read = await client.post("/ai/image/metadata", json={"image": b64(png)})
    assert read.status_code == 200, read.text
    found = read.json()
    assert found["source"] == "fabula" and found["signature"] == "valid" and found["builtin_model"] is False
    request = found["request"]
    assert request["hires"] == {"scale": 0.0, "width": 128, "height": 128, "steps": 2, "strength": 0.5,
                                "upscaler": "lanczos"}
    assert request["noise_schedule"] == "polyexponential" and request["schedule_rho"] == 2.0
    again = await client.post("/ai/generate-image", json=request)
    assert again.status_code == 200, again.text
    assert Image.open(io.BytesIO(png_of(again.json()))).tobytes() == Image.open(io.BytesIO(png)).tobytes()
    key = (await client.get("/ai/image/signing-key")).json()
    assert key["algorithm"] == "Ed25519" and len(base64.b64decode(key["public_key"])) == 32
    assert found["signing_key_id"] == key["key_id"]
    # Tampered pixels: the metadata stays, the signature does not verify.
    image = Image.open(io.BytesIO(png))
    text = dict(image.text)
    changed = image.convert("RGB")
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    for name, value in text.items():
        info.add_itxt(name, value)
    out = io.BytesIO()
    changed.save(out, format="PNG", pnginfo=info)
    tampered = (await client.post("/ai/image/metadata", json={"image": b64(out.getvalue())})).json()
    assert tampered["signature"] == "invalid" and tampered["source"] == "fabula"
    # The A1111 route says the same.
    info_reply = await client.post("/sdapi/v1/png-info", json={"image": b64(png)})
    assert info_reply.status_code == 200 and info_reply.json()["parameters"]["Fabula signature"] == "valid"
    tampered_info = await client.post("/sdapi/v1/png-info", json={"image": b64(out.getvalue())})
    assert tampered_info.json()["parameters"]["Fabula signature"] == "invalid"


async def test_http_upscale_enhance_variations(live) -> None:
    client, _, _ = live
    source = png_bytes(noise_image())
    upscaled = await client.post("/ai/generate-image", json={"action": "upscale", "image": b64(source),
                                                              "width": 100, "height": 100})
    assert upscaled.status_code == 200, upscaled.text
    assert Image.open(io.BytesIO(png_of(upscaled.json()))).size == (100, 100)
    enhanced = await client.post("/ai/generate-image", json={**BODY, "action": "enhance", "image": b64(source),
                                                              "scale": 2, "strength": 0.5})
    assert enhanced.status_code == 200, enhanced.text
    assert enhanced.json()["images"][0]["width"] == 128
    made = png_of((await client.post("/ai/generate-image", json=BODY)).json())
    varied = await client.post("/ai/generate-image", json={"action": "variations", "image": b64(made),
                                                            "n_images": 2, "steps": 2, "seed": 5})
    assert varied.status_code == 200, varied.text
    assert varied.json()["accepted"]["prompt"]["effective_prompt"].endswith("a lighthouse, {storm}")
    assert [image["seed"] for image in varied.json()["images"]] == [5, 6]


@pytest.mark.parametrize("body, status, field", [
    ({**BODY, "hires": {"scale": 50}}, 400, "hires.scale"),
    ({**BODY, "hires": {"width": 8192, "height": 8192}}, 400, "hires.width"),
    ({**BODY, "hires": {"scale": 2, "upscaler": "../../etc/passwd"}}, 400, "hires.upscaler"),
    ({**BODY, "hires": {"scale": 2, "bogus": 1}}, 400, "hires.bogus"),
    ({"action": "upscale", "image": b64(b"not an image at all")}, 400, "image"),
    ({"action": "upscale", "image": "%%%not-base64"}, 400, "image"),
    ({"action": "upscale", "image": b64(png_bytes(Image.new("RGB", (64, 64)))), "scale": 1000}, 400, "scale"),
    ({"action": "enhance", "image": b64(png_bytes(Image.new("RGB", (2048, 2048))))}, 400, "scale"),
    ({"action": "variations", "image": b64(png_bytes(Image.new("RGB", (64, 64))))}, 400, "prompt"),
    ({**BODY, "dynamic_thresholding": 2}, 400, "dynamic_thresholding"),
    ({**BODY, "noise_schedule": "polyexponential", "schedule_rho": -1}, 400, "schedule_rho"),
])
async def test_http_hostile_inputs_are_4xx_naming_the_field(live, body, status, field) -> None:
    client, _, _ = live
    reply = await client.post("/ai/generate-image", json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["field"] == field


async def test_http_metadata_and_tags_refuse_bad_input(live) -> None:
    client, _, _ = live
    for image in (b64(b"GIF89a" + bytes(64)), b64(b"\x89PNG\r\n\x1a\nbroken"), ""):
        reply = await client.post("/ai/image/metadata", json={"image": image})
        assert reply.status_code == 400 and reply.json()["error"]["field"] == "image", reply.text
    assert (await client.get("/ai/image/tags", params={"q": "x" * 300})).status_code == 400
    assert (await client.get("/ai/image/tags", params={"q": "a", "limit": 0})).status_code == 400
    tags = (await client.get("/ai/image/tags", params={"q": "silver h"})).json()["tags"]
    assert tags[0]["name"] == "white_hair" and tags[0]["matched_alias"] == "silver_hair"
    models = (await client.get("/ai/image/models")).json()
    assert models["upscalers"] == ["lanczos"]
    a1111 = await client.post("/ai/image/metadata", json={"image": b64(png_bytes(Image.new("RGB", (8, 8))))})
    assert a1111.json() | {"text_chunks": {}} == {
        "source": "none", "request": None, "parameters": "", "signature": "absent", "signing_key_id": "",
        "builtin_model": False, "text_chunks": {}, "unmapped": {}}


async def test_a1111_txt2img_hires_fields(live) -> None:
    client, _, _ = live
    reply = await client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat", "seed": 3, "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler",
        "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
        "hr_upscaler": "Latent (nearest-exact)"})
    assert reply.status_code == 200, reply.text
    png = base64.b64decode(reply.json()["images"][0])
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    assert "Hires resize: 128x128" in json.loads(reply.json()["info"])["infotexts"][0]


async def test_sdk_and_cli(live, tmp_path) -> None:
    _, url, user = live

    def sdk():
        with ImageClient(url, user.token) as ai:
            made = ai.generate(**BODY, hires={"scale": 2, "steps": 2})
            png = made.images[0].png
            found = ai.metadata(png)
            again = ai.generate(**found["request"])
            upscaled = ai.generate(action="upscale", image=png, scale=1.5)
            try:
                ai.generate(**BODY, hires={"scale": 9})
            except InvalidRequestError as error:
                refused = error
            return png, found, again, upscaled, refused, ai.signing_key(), ai.tags("lightho")

    png, found, again, upscaled, refused, key, tags = await asyncio.to_thread(sdk)
    assert found["signature"] == "valid" and found["signing_key_id"] == key["key_id"]
    assert again.images[0].png != b"" and Image.open(io.BytesIO(again.images[0].png)).size == (128, 128)
    assert Image.open(io.BytesIO(upscaled.images[0].png)).size == (192, 192)
    assert refused.field == "hires.scale" and refused.status == 400
    assert tags[0]["name"] == "lighthouse"

    home = tmp_path / "home"
    SessionStore(home).save(SavedSession(url=url, username=user.username, user_id=user.user_id, token=user.token,
                                         master_key=os.urandom(32)))

    def run(*args):
        return CliRunner().invoke(app, ["--home", str(home), *args])

    source = tmp_path / "made.png"
    source.write_bytes(png)
    hires_out = tmp_path / "hires.png"
    result = await asyncio.to_thread(run, "image", "a fox", "-o", str(hires_out), "-W", "64", "-H", "64", "-s",
                                     "2", "--seed", "1", "--hires", "2", "--hires-steps", "2")
    assert result.exit_code == 0, result.output
    assert Image.open(hires_out).size == (128, 128)
    up = tmp_path / "up.png"
    assert (await asyncio.to_thread(run, "upscale", str(source), "-o", str(up), "--scale", "2")).exit_code == 0
    assert Image.open(up).size == (256, 256)
    enhanced = tmp_path / "enhanced.png"
    result = await asyncio.to_thread(run, "enhance", str(source), "-o", str(enhanced), "-p", "a fox", "-s", "2",
                                     "--scale", "1.5")
    assert result.exit_code == 0, result.output and Image.open(enhanced).size == (192, 192)
    result = await asyncio.to_thread(run, "variations", str(source), "-o", str(tmp_path / "v.png"), "-n", "2",
                                     "-s", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v-1.png").is_file() and (tmp_path / "v-2.png").is_file()
    info = await asyncio.to_thread(run, "image-info", str(source))
    assert info.exit_code == 0 and "signature: valid" in info.stdout and '"hires"' in info.stdout
    listed = await asyncio.to_thread(run, "tags", "long h", "-l", "3")
    assert listed.exit_code == 0 and listed.stdout.splitlines()[0].startswith("long hair\tgeneral\t")
    bad = await asyncio.to_thread(run, "upscale", str(source), "--scale", "100")
    assert bad.exit_code == 1 and "scale" in bad.stderr
