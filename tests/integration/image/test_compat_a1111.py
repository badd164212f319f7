"""AUTOMATIC1111's API (/sdapi/v1) through the real gateway onto the image service on the tiny
model, driven by the unmodified `webuiapi` client from PyPI (it is synchronous, so it runs in a
worker thread while the gateway serves in the test's event loop)."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image, PngImagePlugin

from gateway.schemas.a1111 import NOISE_NOTE
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import noise_image, running_image_service


@pytest.fixture
async def a1111(tmp_path, builtin_tiny):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([builtin_tiny], tmp_path, max_steps=1000) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            user = await register_user(client, "painter")
            client.headers.update(user.headers)
            # Its constructor already calls the server (to probe for extensions): not on the loop.
            api = await asyncio.to_thread(webuiapi.WebUIApi, baseurl=f"{live.url}/sdapi/v1", sampler="Euler",
                                          steps=2)
            api.session.headers.update(user.headers)  # a Fabula bearer token instead of basic auth
            yield api, client, image


async def test_txt2img_with_webuiapi(a1111) -> None:
    api, _, _ = a1111
    result = await asyncio.to_thread(api.txt2img, prompt="a lighthouse, (storm:1.2)", negative_prompt="fog",
                                     seed=42, width=64, height=64, steps=2, cfg_scale=5.0, batch_size=2,
                                     sampler_name="DPM++ 2M", scheduler="Karras")
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [42, 43] and result.info["sampler_name"] == "DPM++ 2M"
    assert result.info["sd_model_name"] == "tiny" and result.info["steps"] == 2
    # The built-in model draws noise, and the answer says so where A1111's format has room.
    assert result.info["builtin_model"] is True and result.info["fabula_note"] == NOISE_NOTE
    infotext = result.info["infotexts"][0]
    assert "Seed: 42" in infotext and "Schedule type: Karras" in infotext and "CFG scale: 5" in infotext
    facts = json.loads(result.images[0].info["fabula"])
    assert facts["builtin_model"] is True and facts["dialect"] == "a1111"
    again = await asyncio.to_thread(api.txt2img, prompt="a lighthouse, (storm:1.2)", negative_prompt="fog",
                                    seed=42, width=64, height=64, steps=2, cfg_scale=5.0, batch_size=2,
                                    sampler_name="DPM++ 2M Karras")  # the older name, schedule included
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


async def test_img2img_and_inpainting_with_webuiapi(a1111) -> None:
    api, _, _ = a1111
    source = noise_image()
    changed = await asyncio.to_thread(api.img2img, images=[source], prompt="a boat", seed=7, steps=2,
                                      width=64, height=64, denoising_strength=0.5)
    assert changed.images[0].size == (64, 64) and "Denoising strength: 0.5" in changed.info["infotexts"][0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    painted = await asyncio.to_thread(api.img2img, images=[source], mask_image=mask, prompt="a boat", seed=7,
                                      steps=2, width=64, height=64, inpainting_fill=1, inpaint_full_res=False,
                                      mask_blur=0)
    kept = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(painted.images[0].convert("RGB"))[kept], np.asarray(source)[kept])
    inverted = await asyncio.to_thread(api.img2img, images=[source], mask_image=mask, prompt="a boat", seed=7,
                                       steps=2, width=64, height=64, inpainting_fill=1, inpaint_full_res=False,
                                       mask_blur=0, inpainting_mask_invert=1)
    inside = ~kept
    assert np.array_equal(np.asarray(inverted.images[0].convert("RGB"))[inside], np.asarray(source)[inside])


async def test_catalogue_routes_with_webuiapi(a1111) -> None:
    api, _, _ = a1111
    samplers = await asyncio.to_thread(api.get_samplers)
    assert {"Euler", "Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in samplers}
    models = await asyncio.to_thread(api.get_sd_models)
    assert [m["model_name"] for m in models] == ["tiny"] and models[0]["title"].startswith("tiny [")
    options = await asyncio.to_thread(api.get_options)
    assert options["sd_model_checkpoint"] == models[0]["title"]
    chosen = await asyncio.to_thread(api.txt2img, prompt="x", seed=1, width=64, height=64, steps=1,
                                     override_settings={"sd_model_checkpoint": models[0]["title"]})
    assert chosen.info["sd_model_name"] == "tiny"


async def test_png_info_reads_fabula_and_a1111_metadata(a1111) -> None:
    api, client, _ = a1111
    made = await asyncio.to_thread(api.txt2img, prompt="a red door", negative_prompt="rust", seed=5, width=64,
                                   height=64, steps=2)
    info = await asyncio.to_thread(api.png_info, made.images[0])
    parsed = info.json["parameters"]
    assert parsed["Prompt"] == "a red door" and parsed["Negative prompt"] == "rust" and parsed["Seed"] == "5"
    assert parsed["Fabula note"] == NOISE_NOTE
    assert json.loads(info.json["items"]["fabula"])["prompt"] == "a red door"
    # A picture saved by A1111 itself: its infotext only, with a quoted value holding commas.
    a1111_png = Image.new("RGB", (8, 8))
    text = ("masterpiece, a cat\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
            'CFG scale: 7, Seed: 123, Size: 512x768, Model: anything, Lora hashes: "a: 1, b: 2", Version: v1.10.1')
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", text)
    out = io.BytesIO()
    a1111_png.save(out, format="PNG", pnginfo=chunk)
    reply = await client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(out.getvalue()).decode()})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["info"] == text and body["items"] == {}
    assert body["parameters"]["Prompt"] == "masterpiece, a cat" and body["parameters"]["Seed"] == "123"
    assert body["parameters"]["Lora hashes"] == "a: 1, b: 2" and body["parameters"]["Version"] == "v1.10.1"
    bad = await client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"nope").decode()})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "image"


async def test_progress_shows_the_preview_and_interrupt_stops_the_generation(a1111) -> None:
    api, client, _ = a1111
    idle = await asyncio.to_thread(api.get_progress)
    assert idle["state"]["job_count"] == 0 and idle["current_image"] is None
    generation = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={
        "prompt": "slow", "seed": 9, "width": 64, "height": 64, "steps": 1000, "sampler_name": "Euler"}))
    progress = idle
    for _ in range(600):
        progress = (await client.get("/sdapi/v1/progress")).json()
        if progress["current_image"] and progress["state"]["sampling_step"] >= 2:
            break
        await asyncio.sleep(0.05)
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 1000
    assert 0 < progress["progress"] < 1
    assert Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).size == (8, 8)
    stopped = await client.post("/sdapi/v1/interrupt")
    assert stopped.status_code == 200 and stopped.json() == {"interrupted": 1}
    answer = await generation
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"] == [] and json.loads(answer.json()["info"])["interrupted"] is True
    assert (await client.get("/sdapi/v1/progress")).json()["state"]["job_count"] == 0


@pytest.mark.parametrize("change, field", [
    ({"width": 65}, "width"), ({"sampler_name": "Heun"}, "sampler_name"), ({"scheduler": "cosine"}, "scheduler"),
    ({"seed": -2}, "seed"), ({"steps": 1001}, "steps"), ({"batch_size": 0}, "batch_size"),
])
async def test_bad_txt2img_input_is_400_naming_the_field(a1111, change, field) -> None:
    _, client, _ = a1111
    reply = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1,
                                                         **change})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["field"] == field


async def test_the_a1111_routes_need_a_signed_in_caller(a1111) -> None:
    _, client, _ = a1111
    for method, path in (("post", "/sdapi/v1/txt2img"), ("get", "/sdapi/v1/progress"), ("get", "/sdapi/v1/samplers"),
                         ("post", "/sdapi/v1/interrupt")):
        reply = await getattr(client, method)(path, headers={"Authorization": ""}, **(
            {"json": {"prompt": "x"}} if method == "post" else {}))
        assert reply.status_code == 401, (path, reply.text)


async def test_options_are_read_only_and_405_says_what_is_allowed(a1111) -> None:
    _, client, _ = a1111
    reply = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other"})
    assert reply.status_code == 405 and reply.headers["allow"] == "GET"
