"""Reference images (IP-Adapter), controls (ControlNet) and character prompts (regional attention)
on the tiny model with the built-in tiny adapters, through gRPC, the HTTP gateway, the SDK and CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import grpc
import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from fabula.image.v1 import image_pb2
from fabula_sdk.cli import app
from fabula_sdk.image import ImageClient
from fabula_sdk.session_store import SavedSession, SessionStore
from fabula_wire.status import read_error_detail
from services.editor.embedded import embedded_editor, fast_settings
from services.image.models import load_model
from services.image.settings import IPAdapterOptions, ModelOptions
from tests.integration.gateway.harness import gateway_settings, register_user, serve_gateway
from tests.integration.image.conftest import collect, decode, images_of, params, png_bytes, running_image_service


@pytest.fixture(scope="session")
def guided_model(tiny_folder, tmp_path_factory):
    options = ModelOptions(source=str(tiny_folder), ip_adapter=IPAdapterOptions(weights="builtin:tiny-ip-adapter"),
                           controlnets={"canny": "builtin:tiny-controlnet", "pose": "builtin:tiny-controlnet",
                                        "scribble": "builtin:tiny-controlnet"})
    return load_model("guided", options, cache_dir=tmp_path_factory.mktemp("guided-cache"),
                      device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
async def service(guided_model, tmp_path):
    async with running_image_service([guided_model], tmp_path) as running:
        yield running


def picture(seed: int = 0, size: int = 96) -> bytes:
    rng = np.random.RandomState(seed)
    image = Image.fromarray((rng.rand(size // 8, size // 8, 3) * 255).astype(np.uint8)).resize((size, size))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=3)
    return png_bytes(image)


POSE = json.dumps({"canvas_width": 128, "canvas_height": 128, "people": [{"pose_keypoints_2d": [
    v for i in range(18) for v in (30 + 4 * i, 10 + 6 * i, 1)]}]})


async def generate(service, **fields) -> np.ndarray:
    request = image_pb2.GenerateRequest(params=params(model="guided", width=128, height=128, steps=3), **fields)
    [image] = images_of(await collect(service.stub.Generate(request)))
    return np.asarray(decode(image.png).convert("RGB"), dtype=np.float64)


async def test_references_controls_and_characters_each_steer_the_picture(service) -> None:
    plain = await generate(service)
    assert np.array_equal(plain, await generate(service))  # fixed seed: the comparison means something
    reference = [image_pb2.ReferenceImage(image=picture(1), strength=1.0)]
    referenced = await generate(service, references=reference)
    less_info = await generate(service, references=[image_pb2.ReferenceImage(image=picture(1), strength=1.0,
                                                                             information_extracted=0.2)])
    other = await generate(service, references=[image_pb2.ReferenceImage(image=picture(2), strength=1.0)])
    for changed in (referenced, less_info, other):
        assert np.abs(changed - plain).mean() > 0.5
    assert np.abs(referenced - less_info).mean() > 0.1 and np.abs(referenced - other).mean() > 0.1
    canny = await generate(service, controls=[image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY,
                                                                image=picture(1))])
    pose = await generate(service, controls=[image_pb2.Control(kind=image_pb2.CONTROL_KIND_POSE, pose_json=POSE)])
    weak = await generate(service, controls=[image_pb2.Control(kind=image_pb2.CONTROL_KIND_POSE, pose_json=POSE,
                                                               strength=0.0)])
    assert np.abs(canny - plain).mean() > 0.5 and np.abs(pose - plain).mean() > 0.5
    assert np.abs(weak - plain).max() <= 1  # strength 0 adds zero residuals
    both = await generate(service, references=reference, controls=[
        image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=picture(1), start=0.0, end=0.5)],
                          characters=[image_pb2.CharacterPrompt(prompt="a dragon", center="B2")])
    assert both.shape == (128, 128, 3)


async def test_a_character_prompt_changes_its_region_far_more_than_the_rest(service) -> None:
    async def run(**fields):
        request = image_pb2.GenerateRequest(params=params(model="guided", width=512, height=256, steps=4), **fields)
        [image] = images_of(await collect(service.stub.Generate(request)))
        return np.asarray(decode(image.png).convert("RGB"), dtype=np.float64)

    plain = await run()
    character = await run(characters=[image_pb2.CharacterPrompt(prompt="a red dragon, fire, explosion", x=0.0,
                                                                y=0.0, width=0.25, height=1.0)])
    change = np.abs(character - plain).mean(axis=(0, 2))  # per column
    inside, far_outside = change[:128].mean(), change[256:].mean()
    # Cross-attention outside the region sees the base prompt alone; what still changes there comes
    # through the UNet's convolutions and self-attention from the region.
    assert inside > 2 * far_outside, (inside, far_outside)


def status_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    detail, _ = read_error_detail(error)
    return error.code(), detail.field


@pytest.mark.parametrize("fields, code, field", [
    ({"references": [image_pb2.ReferenceImage(image=b"x")] * 2000}, grpc.StatusCode.INVALID_ARGUMENT, "references"),
    ({"references": [image_pb2.ReferenceImage(image=b"not an image")]}, grpc.StatusCode.INVALID_ARGUMENT,
     "references[0].image"),
    ({"controls": [image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=b"x")] * 500},
     grpc.StatusCode.INVALID_ARGUMENT, "controls"),
    ({"characters": [image_pb2.CharacterPrompt(prompt="a")] * 3000}, grpc.StatusCode.INVALID_ARGUMENT, "characters"),
    ({"characters": [image_pb2.CharacterPrompt(prompt="a", x=0.8, y=0.1, width=0.5, height=0.5)]},
     grpc.StatusCode.INVALID_ARGUMENT, "characters[0].width"),
    ({"controls": [image_pb2.Control(kind=image_pb2.CONTROL_KIND_LINEART, image=b"")]},
     grpc.StatusCode.FAILED_PRECONDITION, "controls[0].controlnet"),
    ({"controls": [image_pb2.Control(kind=image_pb2.CONTROL_KIND_POSE, pose_json="{")]},
     grpc.StatusCode.INVALID_ARGUMENT, "controls[0].pose_json"),
    ({"controls": [image_pb2.Control(kind=99, image=b"x")]}, grpc.StatusCode.INVALID_ARGUMENT, "controls[0].kind"),
])
async def test_hostile_guidance_is_refused_naming_the_field(service, fields, code, field) -> None:
    request = image_pb2.GenerateRequest(params=params(model="guided"), **fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(service.stub.Generate(request))
    assert status_of(caught.value) == (code, field)


async def test_a_model_without_adapters_refuses_references_and_names_the_setting(tiny_model, tmp_path) -> None:
    async with running_image_service([tiny_model], tmp_path) as running:
        request = image_pb2.GenerateRequest(params=params(), references=[image_pb2.ReferenceImage(image=picture())])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(running.stub.Generate(request))
        assert status_of(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "references")
        assert "ip_adapter" in caught.value.details()


async def test_preprocess_control_returns_the_control_image(service) -> None:
    reply = await service.stub.PreprocessControl(image_pb2.PreprocessControlRequest(
        control=image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=picture(3)), width=128, height=64))
    edges = decode(reply.png)
    assert (reply.width, reply.height) == (128, 64) and edges.size == (128, 64)
    assert set(np.unique(np.asarray(edges))) <= {0, 255}
    pose = await service.stub.PreprocessControl(image_pb2.PreprocessControlRequest(
        control=image_pb2.Control(kind=image_pb2.CONTROL_KIND_POSE, pose_json=POSE)))
    assert (pose.width, pose.height) == (128, 128)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PreprocessControl(image_pb2.PreprocessControlRequest(
            control=image_pb2.Control(kind=image_pb2.CONTROL_KIND_DEPTH, image=picture())))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FABULA_IMAGE_DEPTH_MODEL" in caught.value.details()
    models = await service.stub.ListModels(image_pb2.ListModelsRequest())
    assert models.models[0].references and set(models.models[0].controlnets) == {"canny", "pose", "scribble"}
    assert (models.max_references, models.max_controls, models.max_characters) == (4, 4, 6)


@pytest.fixture
async def live(tmp_path, guided_model):
    async with embedded_editor(fast_settings(f"sqlite:///{tmp_path / 'editor.db'}")) as editor, \
            running_image_service([guided_model], tmp_path) as image:
        settings = gateway_settings(editor.address, image_address=image.address)
        async with serve_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            user = await register_user(client, "director")
            client.headers.update(user.headers)
            yield gateway.url, user, client


BODY = {"prompt": "a knight", "width": 128, "height": 128, "steps": 3, "seed": 1234, "sampler": "euler"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_http_sdk_and_cli_carry_references_controls_and_characters(live, tmp_path) -> None:
    url, user, client = live
    reply = await client.post("/ai/generate-image", json={
        **BODY, "references": [{"image": b64(picture(1)), "strength": 1.0, "information_extracted": 0.5}],
        "controls": [{"kind": "pose", "pose_json": POSE}],
        "characters": [{"prompt": "a dragon", "x": 0.5, "y": 0.0, "width": 0.5, "height": 1.0}]})
    assert reply.status_code == 200, reply.text
    over_http = base64.b64decode(reply.json()["images"][0]["png"])
    for body, status, field in (
            ({"references": [{"image": b64(b"junk")}]}, 400, "references[0].image"),
            ({"characters": [{"prompt": "a", "x": 0.9, "width": 0.5, "height": 0.5}]}, 400, "characters[0].width"),
            ({"characters": [{"prompt": "a"}] * 20}, 400, "characters"),
            ({"controls": [{"kind": "lineart", "image": b64(picture())}]}, 409, "controls[0].controlnet")):
        refused = await client.post("/ai/generate-image", json={**BODY, **body})
        assert refused.status_code == status, refused.text
        assert refused.json()["error"]["field"] == field
    too_many = await client.post("/ai/generate-image", json={**BODY, "references": [{"image": ""}] * 5000})
    assert too_many.status_code == 400 and too_many.json()["error"]["field"].startswith("references")
    preview = await client.post("/ai/image/control-preview", json={"kind": "scribble", "image": b64(picture())})
    assert preview.status_code == 200 and decode(base64.b64decode(preview.json()["png"])).size == (64, 64)
    bad_preview = await client.post("/ai/image/control-preview", json={"kind": "canny", "image": b64(b"junk")})
    assert bad_preview.status_code == 400 and bad_preview.json()["error"]["field"] == "image"

    def sdk():
        with ImageClient(url, user.token) as ai:
            result = ai.generate(**BODY, references=[{"image": picture(1), "strength": 1.0,
                                                      "information_extracted": 0.5}],
                                 controls=[{"kind": "pose", "pose_json": POSE}],
                                 characters=[{"prompt": "a dragon", "x": 0.5, "y": 0.0, "width": 0.5, "height": 1.0}])
            return result.images[0].png, ai.control_preview("pose", pose_json=POSE, width=64, height=64)

    from_sdk, pose_png = await asyncio.to_thread(sdk)
    assert from_sdk == over_http and decode(pose_png).size == (64, 64)

    home = tmp_path / "home"
    SessionStore(home).save(SavedSession(url=url, username=user.username, user_id=user.user_id, token=user.token,
                                         master_key=os.urandom(32)))
    (tmp_path / "ref.png").write_bytes(picture(1))
    (tmp_path / "pose.json").write_text(POSE)
    out = tmp_path / "out.png"

    def cli(*args):
        return CliRunner().invoke(app, ["--home", str(home), "image", "a knight", "-o", str(out), "-W", "128", "-H",
                                        "128", "-s", "3", "--seed", "1234", "--sampler", "euler", *args])

    result = await asyncio.to_thread(cli, "--reference", f"{tmp_path / 'ref.png'}:1.0:0.5", "--control",
                                     f"pose:{tmp_path / 'pose.json'}", "--character", "a dragon@0.5,0,0.5,1")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == over_http
    bad = await asyncio.to_thread(cli, "--character", "a dragon@0.9,0,0.5,1")
    assert bad.exit_code == 1 and "characters[0].width" in bad.stderr


def _jobs_alone_and_together(model, raws, cache_dir):
    """Latents of each request denoised alone, then all of them sharing UNet calls."""
    from services.image.generator import ImageGenerator
    from services.image.params import check_inputs
    from services.image.pipeline import Job
    from services.image.settings import ImageSettings

    settings = ImageSettings(models={model.name: model.source}, cache_dir=cache_dir, backend="eager", warmup_steps=0)
    generator = ImageGenerator(settings)
    generator.add_model(model)
    pipeline = generator.pipelines[model.name]

    def job(raw):
        request = check_inputs(raw, generator.models, model.name, settings)
        prepared = Job(request, pipeline.tokenize(request), emit=lambda event: None)
        pipeline.prepare(prepared)
        return prepared

    alone = []
    for raw in raws:
        single = job(raw)
        while not single.done:
            pipeline.denoise([single])
        alone.append(single.latents)
    jobs = [job(raw) for raw in raws]
    keys = {j.key for j in jobs}
    while not all(j.done for j in jobs):
        for key in keys:
            group = [j for j in jobs if j.key == key and not j.done]
            if group:
                pipeline.denoise(group)
    return alone, [j.latents for j in jobs], keys


def test_guided_and_plain_jobs_share_unet_calls_without_changing_each_other(guided_model, tmp_path) -> None:
    from services.image.control import RawControl
    from services.image.guidance import RawGuidance
    from services.image.params import RawRequest
    from services.image.references import RawReference
    from services.image.regions import RawCharacter

    common = dict(model="guided", width=128, height=128, steps=3, sampler="euler", seed=7)
    raws = [
        RawRequest(prompt="a knight", **common, guidance=RawGuidance(
            references=[RawReference(picture(1), 1.0, 0.5)],
            controls=[RawControl(kind="pose", pose_json=POSE, end=0.5)])),
        RawRequest(prompt="a knight", **common),
        # One character (two segments of 77 tokens) beside a plain prompt of two chunks: one group.
        RawRequest(prompt="a knight", **common, guidance=RawGuidance(
            characters=[RawCharacter("a dragon", x=0.5, width=0.5, height=1.0)])),
        RawRequest(prompt="a knight BREAK a castle", dialect="a1111", **common),
    ]
    alone, together, keys = _jobs_alone_and_together(guided_model, raws, tmp_path)
    assert len(keys) == 2  # rows of guided and plain jobs really were in the same UNet calls
    for single, shared in zip(alone, together):
        torch.testing.assert_close(shared, single, rtol=1e-4, atol=1e-4)
    assert (alone[0] - alone[1]).abs().mean() > 1e-3


async def test_the_png_records_the_guidance(service) -> None:
    from services.image.images import parse_parameters

    request = image_pb2.GenerateRequest(
        params=params(model="guided"), references=[image_pb2.ReferenceImage(image=picture(), strength=0.8)],
        controls=[image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=picture(), end=0.5)],
        characters=[image_pb2.CharacterPrompt(prompt="a dragon, red", center="C3")])
    [image] = images_of(await collect(service.stub.Generate(request)))
    recorded = json.loads(decode(image.png).info["fabula"])
    assert recorded["references"] == [{"strength": pytest.approx(0.8), "information_extracted": 1.0}]
    assert recorded["controls"][0] | {"strength": 1.0} == {"kind": "canny", "controlnet": "canny", "strength": 1.0,
                                                          "start": 0.0, "end": 0.5}
    assert recorded["characters"] == [{"prompt": "a dragon, red", "negative_prompt": "", "center": "C3",
                                       "box": [0.25, 0.25, 0.75, 0.75]}]
    _, _, fields = parse_parameters(image.parameters)
    assert fields["ControlNet 0"].startswith("Module: canny, Model: canny, Weight: 1")
    assert fields["Character 0"] == "a dragon, red @ 0.25,0.25,0.75,0.75"


def test_sdxl_takes_references_controls_and_characters(tiny_sdxl_folder, tmp_path) -> None:
    from services.image.control import RawControl
    from services.image.guidance import RawGuidance
    from services.image.params import RawRequest
    from services.image.references import RawReference
    from services.image.regions import RawCharacter

    options = ModelOptions(source=str(tiny_sdxl_folder), ip_adapter=IPAdapterOptions(weights="builtin:tiny-ip-adapter"),
                           controlnets={"canny": "builtin:tiny-controlnet"})
    model = load_model("xlg", options, cache_dir=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    common = dict(model="xlg", prompt="a knight", width=128, height=128, steps=2, sampler="euler", seed=3)
    raws = [RawRequest(**common), RawRequest(**common, guidance=RawGuidance(
        references=[RawReference(picture(1), 1.0)], controls=[RawControl(kind="canny", image=picture(2))],
        characters=[RawCharacter("a dragon", center="A3")]))]
    alone, _, _ = _jobs_alone_and_together(model, raws, tmp_path)
    assert (alone[0] - alone[1]).abs().mean() > 1e-3


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(decode(png).convert("RGB"), dtype=np.int16)


async def test_a_control_matches_diffusers_controlnet_pipeline(service, guided_model) -> None:
    """One control through the service and diffusers' StableDiffusionControlNetPipeline on the same
    components and control image: the same picture (up to float rounding)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    control = image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=picture(4, 128), strength=0.8)
    request = image_pb2.GenerateRequest(params=params(
        model="guided", prompt="a knight in the snow", negative_prompt="blurry", quality_tags=False,
        negative_preset="none", width=128, height=128, steps=3, guidance_scale=6.5, seed=99), controls=[control])
    [served] = images_of(await collect(service.stub.Generate(request)))
    preview = await service.stub.PreprocessControl(image_pb2.PreprocessControlRequest(control=control, width=128,
                                                                                      height=128))
    network = service.generator.pipelines["guided"].guidance.controlnets["canny"]
    pipe = StableDiffusionControlNetPipeline(
        vae=guided_model.vae, text_encoder=guided_model.text_encoders[0], tokenizer=guided_model.tokenizers[0],
        unet=guided_model.unet, controlnet=network,
        scheduler=EulerDiscreteScheduler.from_config(guided_model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    [direct] = pipe(prompt="a knight in the snow", negative_prompt="blurry", image=decode(preview.png).convert("RGB"),
                    height=128, width=128, num_inference_steps=3, guidance_scale=6.5,
                    controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(99)).images
    difference = np.abs(_pixels(served.png) - np.asarray(direct, dtype=np.int16))
    assert difference.max() <= 2, difference.max()


async def test_a_reference_matches_diffusers_ip_adapter_pipeline(service, guided_model, tmp_path) -> None:
    """One reference (all its information) through the service and diffusers' own IP-Adapter path
    (load_ip_adapter on a copy of the UNet, set_ip_adapter_scale, ip_adapter_image): the same picture."""
    import copy

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from services.image.references import TINY_WEIGHTS_FILE, build_tiny_ip_adapter

    reference = picture(5, 64)
    request = image_pb2.GenerateRequest(params=params(
        model="guided", prompt="a knight in the snow", negative_prompt="blurry", quality_tags=False,
        negative_preset="none", width=128, height=128, steps=3, guidance_scale=6.5, seed=99),
        references=[image_pb2.ReferenceImage(image=reference, strength=0.7)])
    [served] = images_of(await collect(service.stub.Generate(request)))
    folder = build_tiny_ip_adapter(tmp_path / "ip", guided_model.unet)
    from services.image.attention import plain_processors

    unet = copy.deepcopy(guided_model.unet)
    unet.set_attn_processor(plain_processors(unet))
    pipe = StableDiffusionPipeline(
        vae=guided_model.vae, text_encoder=guided_model.text_encoders[0], tokenizer=guided_model.tokenizers[0],
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(guided_model.scheduler_config), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=TINY_WEIGHTS_FILE, image_encoder_folder="image_encoder",
                         local_files_only=True)
    pipe.set_ip_adapter_scale(0.7)
    [direct] = pipe(prompt="a knight in the snow", negative_prompt="blurry", ip_adapter_image=decode(reference),
                    height=128, width=128, num_inference_steps=3, guidance_scale=6.5,
                    generator=torch.Generator().manual_seed(99)).images
    difference = np.abs(_pixels(served.png) - np.asarray(direct, dtype=np.int16))
    assert difference.max() <= 2, difference.max()
