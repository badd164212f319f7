"""The HTTP routes: the real gateway (uvicorn) in front of the real editor (auth) and the image
service on the tiny model, all in-process on free ports."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

from services.editor.embedded import embedded_editor, fast_settings
from services.image.images import parse_parameters
from tests.integration.gateway.harness import events_of, gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import png_bytes, running_image_service


@asynccontextmanager
async def stack(tmp_path, tiny_model, **image_options):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([tiny_model], tmp_path, **image_options) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            user = await register_user(client, "illustrator")
            client.headers.update(user.headers)
            yield client, image


@pytest.fixture
async def ai(tmp_path, tiny_model):
    async with stack(tmp_path, tiny_model) as running:
        yield running


BODY = {"prompt": "a lighthouse, {storm}", "width": 64, "height": 64, "steps": 2, "seed": 42, "sampler": "euler"}


def b64png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


async def test_generate_image_json_and_zip_agree(ai) -> None:
    client, _ = ai
    reply = await client.post("/ai/generate-image", json={**BODY, "n_images": 2})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["accepted"]["seeds"] == [42, 43]
    images = result["images"]
    assert [(i["index"], i["seed"]) for i in images] == [(0, 42), (1, 43)]
    first = base64.b64decode(images[0]["png"])
    assert Image.open(io.BytesIO(first)).size == (64, 64)
    prompt, _, fields = parse_parameters(Image.open(io.BytesIO(first)).text["parameters"])
    assert prompt.endswith("a lighthouse, {storm}") and fields["Seed"] == "42"
    zipped = await client.post("/ai/generate-image", json={**BODY, "n_images": 2},
                               headers={"Accept": "application/zip"})
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.namelist() == ["image_0_42.png", "image_1_43.png"]
        assert archive.read("image_0_42.png") == first
    as_field = await client.post("/ai/generate-image", json={**BODY, "response_format": "zip"})
    assert as_field.headers["content-type"] == "application/zip"


async def test_generate_image_stream_sends_progress_previews_then_images(ai) -> None:
    client, _ = ai
    reply = await client.post("/ai/generate-image-stream", json={**BODY, "steps": 3, "preview_every": 1})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = events_of(reply.text)
    assert [kind for kind, _ in events] == ["accepted", "progress", "progress", "progress", "image", "finished"]
    assert events[1][1]["step"] == 1 and events[1][1]["total_steps"] == 3
    preview = Image.open(io.BytesIO(base64.b64decode(events[1][1]["previews"][0])))
    assert preview.size == (8, 8)
    assert events[4][1]["seed"] == 42


@pytest.mark.parametrize("action", ["img2img", "inpaint", "outpaint"])
async def test_image_actions_over_http(ai, action) -> None:
    client, _ = ai
    source = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    extra = {"img2img": {"image": b64png(source), "strength": 0.5},
             "inpaint": {"image": b64png(source), "mask": b64png(mask)},
             "outpaint": {"image": b64png(source), "left": 64}}[action]
    body = {**BODY, "width": 0, "height": 0, "action": action, **extra}
    reply = await client.post("/ai/generate-image", json=body)
    assert reply.status_code == 200, reply.text
    image = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]["png"])))
    assert image.size == ((128, 64) if action == "outpaint" else (64, 64))
    if action == "inpaint":
        kept = np.asarray(mask) == 0
        assert np.array_equal(np.asarray(image.convert("RGB"))[kept], np.asarray(source)[kept])


@pytest.mark.parametrize("change, field", [
    ({"width": 65}, "width"), ({"steps": 10_000}, "steps"), ({"sampler": "nope"}, "sampler"),
    ({"action": "img2img", "image": base64.b64encode(b"not an image").decode()}, "image"),
    ({"action": "inpaint", "image": "", "mask": ""}, "image"),
    ({"image": "***"}, "image"), ({"steps": -1}, "steps"), ({"noise_schedule": "cosine"}, "noise_schedule"),
    ({"dialect": "comfy"}, "dialect"),
])
async def test_bad_input_is_400_naming_the_field(ai, change, field) -> None:
    client, _ = ai
    for route in ("/ai/generate-image", "/ai/generate-image-stream"):
        reply = await client.post(route, json={**BODY, **change})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field


async def test_mask_of_the_wrong_size_is_400(ai) -> None:
    client, _ = ai
    reply = await client.post("/ai/generate-image", json={
        **BODY, "action": "inpaint", "image": b64png(Image.new("RGB", (64, 64))),
        "mask": b64png(Image.new("L", (32, 64), 255))})
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "mask"


async def test_tokenize_and_models(ai) -> None:
    client, _ = ai
    reply = await client.post("/ai/image/tokenize", json={"prompt": "(red:1.3) fox"})
    assert reply.status_code == 200, reply.text
    chunk = reply.json()["prompt"]["chunks"][0]
    assert chunk["tokens"] == ["red</w>", "fox</w>"] and chunk["weights"] == [1.3, 1.0]
    assert reply.json()["chunk_tokens"] == 75
    assert reply.json()["prompt"]["dialect"] == "novelai"
    edited = await client.post("/ai/image/tokenize", json={"prompt": "((red)) [fox:wolf:0.5] BREAK snow",
                                                           "dialect": "a1111", "steps": 4})
    assert edited.status_code == 200, edited.text
    report = edited.json()["prompt"]
    assert report["dialect"] == "a1111" and [s["until_step"] for s in report["stages"]] == [2, 4]
    assert report["segments"][0] == {"text": "red", "weight": 1.21, "chunk_break": False}
    assert [len(stage["chunks"]) for stage in report["stages"]] == [2, 2]
    assert report["stages"][1]["chunks"][0]["tokens"] == ["red</w>", "wolf</w>"]
    for body, field in (({"prompt": "x", "dialect": "comfy"}, "dialect"), ({"prompt": "x", "steps": 10_000}, "steps")):
        refused = await client.post("/ai/image/tokenize", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["field"] == field, refused.text
    models = (await client.get("/ai/image/models")).json()
    assert models["models"][0]["name"] == "tiny" and "karras" in next(
        s for s in models["samplers"] if s["name"] == "euler")["noise_schedules"]


async def test_routes_need_a_logged_in_user(ai) -> None:
    client, _ = ai
    anonymous = {"Authorization": ""}
    for method, route, body in (("POST", "/ai/generate-image", BODY), ("POST", "/ai/generate-image-stream", BODY),
                                ("POST", "/ai/image/tokenize", {"prompt": "x"}), ("GET", "/ai/image/models", None)):
        reply = await client.request(method, route, json=body, headers=anonymous)
        assert reply.status_code == 401, (route, reply.text)


async def test_a_full_queue_answers_429(tmp_path, tiny_model) -> None:
    async with stack(tmp_path, tiny_model, max_batch_images=1, max_queue=0) as (client, image):
        running = asyncio.create_task(client.post("/ai/generate-image", json={**BODY, "steps": 150}))
        for _ in range(200):
            if image.batcher().unet_calls:
                break
            await asyncio.sleep(0.05)
        reply = await client.post("/ai/generate-image", json=BODY)
        assert reply.status_code == 429, reply.text
        assert reply.json()["error"]["code"] == "RESOURCE_EXHAUSTED" and int(reply.headers["retry-after"]) >= 1
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_a_client_that_leaves_stops_the_generation(tmp_path, tiny_model) -> None:
    async with stack(tmp_path, tiny_model) as (client, image):
        async with client.stream("POST", "/ai/generate-image-stream", json={**BODY, "steps": 150}) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("event: progress"):
                    break
        for _ in range(200):
            if image.batcher().idle:
                break
            await asyncio.sleep(0.05)
        assert image.batcher().idle and image.batcher().unet_calls < 150
