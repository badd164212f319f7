"""NovelAI's image API under /novelai through the real gateway onto the image service on the
tiny model, with the exact request bodies NovelAI clients send (raw HTTP: there is no NovelAI
client on PyPI that can be pointed at another host and speaks this API)."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.schemas.a1111 import NOISE_NOTE
from services.editor.embedded import embedded_editor, fast_settings
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import noise_image, png_bytes, running_image_service


@pytest.fixture
async def novelai(tmp_path, builtin_tiny):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([builtin_tiny], tmp_path) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as live, \
                httpx.AsyncClient(base_url=f"{live.url}/novelai", timeout=60) as client:
            async with httpx.AsyncClient(base_url=live.url) as plain:
                user = await register_user(plain, "novelist")
            client.headers.update(user.headers)
            yield client


def pngs_of(reply: httpx.Response) -> dict[str, bytes]:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# SillyTavern's body, as src/endpoints/novelai.js (SillyTavern/SillyTavern) builds it for
# /ai/generate-image; its seed is drawn below 9999999999, so beyond 32 bits.
def sillytavern_body(seed: int) -> dict:
    return {"action": "generate", "input": "1girl, lighthouse, {storm}", "model": "nai-diffusion-3",
            "parameters": {"negative_prompt": "lowres", "height": 64, "width": 64, "scale": 9, "seed": seed,
                           "sampler": "k_dpmpp_2m", "steps": 2, "n_samples": 1, "ucPreset": 0,
                           "qualityToggle": False, "add_original_image": False, "controlnet_strength": 1,
                           "dynamic_thresholding": False, "legacy": False, "sm": False, "sm_dyn": False,
                           "uncond_scale": 1}}


async def test_sillytavern_generate_body_answers_a_zip_of_pngs(novelai) -> None:
    reply = await novelai.post("/ai/generate-image", json=sillytavern_body(seed=7_000_000_123))
    files = pngs_of(reply)
    assert list(files) == ["image_0.png"]
    picture = Image.open(io.BytesIO(files["image_0.png"]))
    assert picture.size == (64, 64)
    facts = json.loads(picture.text["fabula"])
    assert facts["seed"] == 7_000_000_123 % 2**32 and facts["sampler"] == "dpmpp_2m"
    assert facts["guidance_scale"] == 9 and facts["quality_tags"] is False and facts["negative_preset"] == "heavy"
    assert facts["dialect"] == "novelai" and facts["model"] == "tiny"
    # The built-in model's pictures are noise: the headers say so (and the PNG's chunk).
    assert facts["builtin_model"] is True
    assert reply.headers["x-fabula-builtin-model"] == "true" and reply.headers["x-fabula-note"] == NOISE_NOTE


async def test_novelai_controls_are_translated(novelai) -> None:
    body = {"action": "generate", "input": "a harbour", "model": "nai-diffusion-3",
            "parameters": {"width": 64, "height": 64, "scale": 5.5, "sampler": "k_dpmpp_2m", "steps": 2,
                           "n_samples": 2, "seed": 11, "negative_prompt": "fog", "ucPreset": 1,
                           "qualityToggle": True, "cfg_rescale": 0.5, "noise_schedule": "karras"}}
    files = pngs_of(await novelai.post("/ai/generate-image", json=body))
    assert list(files) == ["image_0.png", "image_1.png"]
    first, second = (json.loads(Image.open(io.BytesIO(files[name])).text["fabula"]) for name in files)
    assert (first["seed"], second["seed"]) == (11, 12)
    assert first["sampler"] == "dpmpp_2m" and first["noise_schedule"] == "karras"
    assert first["guidance_rescale"] == 0.5 and first["negative_preset"] == "light" and first["quality_tags"] is True


# img2img and infill as NovelAI's web client and its client libraries send them (e.g. the
# InpaintParams of HanaokaYuzu/NovelAI-API: the image and a white-means-redraw mask, base64).
async def test_img2img_and_infill(novelai) -> None:
    source = noise_image()
    changed = await novelai.post("/ai/generate-image", json={
        "action": "img2img", "input": "a boat", "model": "nai-diffusion-3",
        "parameters": {"width": 64, "height": 64, "steps": 2, "seed": 3, "sampler": "k_euler", "n_samples": 1,
                       "image": b64(png_bytes(source)), "strength": 0.5, "noise": 0.1, "extra_noise_seed": 3}})
    facts = json.loads(Image.open(io.BytesIO(pngs_of(changed)["image_0.png"])).text["fabula"])
    assert facts["action"] == "img2img" and facts["strength"] == 0.5 and facts["extra_noise"] == pytest.approx(0.1)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    infilled = await novelai.post("/ai/generate-image", json={
        "action": "infill", "input": "a boat", "model": "nai-diffusion-3-inpainting",
        "parameters": {"width": 64, "height": 64, "steps": 2, "seed": 3, "sampler": "k_euler", "n_samples": 1,
                       "image": b64(png_bytes(source)), "mask": b64(png_bytes(mask)), "strength": 1}})
    result = Image.open(io.BytesIO(pngs_of(infilled)["image_0.png"]))
    assert json.loads(result.text["fabula"])["action"] == "inpaint"
    kept = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(result.convert("RGB"))[kept & _far_from_the_seam(mask)],
                          np.asarray(source)[kept & _far_from_the_seam(mask)])


def _far_from_the_seam(mask: Image.Image, margin: int = 12) -> np.ndarray:
    """Pixels farther than the default mask blur from the redrawn area (the seam may blend)."""
    redrawn = np.argwhere(np.asarray(mask) > 0)
    top, left = redrawn.min(axis=0) - margin
    bottom, right = redrawn.max(axis=0) + margin
    far = np.ones(mask.size[::-1], dtype=bool)
    far[max(0, top):bottom + 1, max(0, left):right + 1] = False
    return far


@pytest.mark.parametrize("change, field", [
    ({"width": 65}, "parameters.width"), ({"sampler": "k_lms"}, "parameters.sampler"),
    ({"noise_schedule": "polyexponential"}, "parameters.noise_schedule"), ({"n_samples": 9}, "parameters.n_samples"),
    ({"seed": -1}, "parameters.seed"), ({"ucPreset": 4}, "parameters.ucPreset"),
    ({"steps": 10_000}, "parameters.steps"),
])
async def test_bad_parameters_are_400_naming_the_field(novelai, change, field) -> None:
    body = sillytavern_body(seed=1)
    body["parameters"].update(change)
    reply = await novelai.post("/ai/generate-image", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["field"] == field


async def test_image_errors_name_novelais_fields(novelai) -> None:
    reply = await novelai.post("/ai/generate-image", json={
        "action": "img2img", "input": "x", "parameters": {"image": b64(b"not an image"), "steps": 1}})
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "parameters.image"


async def test_the_novelai_routes_need_a_signed_in_caller(novelai) -> None:
    reply = await novelai.post("/ai/generate-image", json=sillytavern_body(seed=1), headers={"Authorization": ""})
    assert reply.status_code == 401
