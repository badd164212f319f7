"""ReadMetadata (Fabula's and A1111's PNG metadata back into a request), the signatures on PNGs
across restarts, and SuggestTags, over gRPC on the tiny model."""

from __future__ import annotations

import base64
import io

import grpc
import pytest
from nacl.signing import VerifyKey
from PIL import Image, PngImagePlugin

from fabula.image.v1 import image_pb2
from fabula_wire import read_error_detail
from services.image import signing
from services.image.tags import TagIndex
from tests.integration.image.conftest import collect, decode, images_of, noise_image, params, running_image_service

A1111_TEXT = ("masterpiece, (red fox:1.2), snow\nNegative prompt: lowres, bad hands\n"
              "Steps: 24, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, "
              "Model hash: abcdef1234, Model: someone-elses-model, Denoising strength: 0.45, "
              "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (nearest-exact), Clip skip: 2, "
              "Version: v1.10.1")


def png_with_text(text: dict[str, str], image: Image.Image | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    out = io.BytesIO()
    (image or noise_image()).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def resaved(png: bytes, change=None) -> bytes:
    """The same PNG decoded and written again with its text chunks (optionally changed)."""
    image = Image.open(io.BytesIO(png))
    text = dict(image.text)
    pixels = image.convert("RGB")
    if change is not None:
        pixels, text = change(pixels, text)
    return png_with_text(text, pixels)


async def test_a_fabula_image_reads_back_into_the_same_request(image_service) -> None:
    request = image_pb2.GenerateRequest(params=params(
        prompt="a lighthouse, {storm}", negative_prompt="blurry", steps=3, guidance_scale=6.0,
        noise_schedule=image_pb2.NOISE_SCHEDULE_POLYEXPONENTIAL, schedule_rho=1.5,
        hires=image_pb2.HiresFix(scale=2, steps=2, strength=0.5)))
    original = images_of(await collect(image_service.stub.Generate(request)))[0]
    found = await image_service.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=original.png))
    assert found.source == "fabula" and found.signature == image_pb2.SIGNATURE_STATUS_VALID
    assert found.signing_key_id == image_service.generator.signer.key_id
    rerun = found.request
    assert rerun.params.prompt == "a lighthouse, {storm}" and rerun.params.seed == 1234
    assert rerun.params.hires.width == 128 and rerun.params.hires.steps == 2
    assert rerun.WhichOneof("action") == "txt2img"
    again = images_of(await collect(image_service.stub.Generate(rerun)))[0]
    # The same picture; its metadata differs only in nothing (the same parameters).
    assert decode(again.png).tobytes() == decode(original.png).tobytes()
    assert again.parameters == original.parameters


async def test_tampered_pixels_or_metadata_do_not_verify(image_service) -> None:
    png = images_of(await collect(image_service.stub.Generate(image_pb2.GenerateRequest(params=params()))))[0].png

    async def verdict(data: bytes) -> int:
        return (await image_service.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=data))).signature

    assert await verdict(resaved(png)) == image_pb2.SIGNATURE_STATUS_VALID  # lossless re-encoding keeps it

    def one_pixel(pixels, text):
        pixels.putpixel((3, 3), tuple((v + 1) % 256 for v in pixels.getpixel((3, 3))))
        return pixels, text

    def other_seed(pixels, text):
        return pixels, {**text, "parameters": text["parameters"].replace("Seed: 1234", "Seed: 1235")}

    def other_key(pixels, text):
        forged = signing.ImageSigner(signing.SigningKey.generate())
        return pixels, {**text, signing.CHUNK: forged.signature_text(pixels, text)}

    assert await verdict(resaved(png, one_pixel)) == image_pb2.SIGNATURE_STATUS_INVALID
    assert await verdict(resaved(png, other_seed)) == image_pb2.SIGNATURE_STATUS_INVALID
    assert await verdict(resaved(png, other_key)) == image_pb2.SIGNATURE_STATUS_UNKNOWN_KEY
    assert await verdict(png_with_text({})) == image_pb2.SIGNATURE_STATUS_ABSENT


async def test_signatures_verify_across_a_restart_and_outside_fabula(tiny_model, tmp_path) -> None:
    async with running_image_service([tiny_model], tmp_path) as first:
        png = images_of(await collect(first.stub.Generate(image_pb2.GenerateRequest(params=params()))))[0].png
        key = await first.stub.GetSigningKey(image_pb2.GetSigningKeyRequest())
    assert (tmp_path / "signing-key").stat().st_mode & 0o777 == 0o600
    async with running_image_service([tiny_model], tmp_path) as second:
        found = await second.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=png))
        assert found.signature == image_pb2.SIGNATURE_STATUS_VALID
        assert (await second.stub.GetSigningKey(image_pb2.GetSigningKeyRequest())).public_key == key.public_key
    # A verifier with only the published key and scheme (PyNaCl, no Fabula code).
    image = Image.open(io.BytesIO(png))
    _, key_id, signature = image.text["fabula_signature"].split(":")
    assert key_id == key.key_id and key.algorithm == "Ed25519"
    import hashlib
    message = (b"fabula-image-signature-v1\n"
               + hashlib.sha256(f"{image.mode} {image.width} {image.height}\n".encode() + image.tobytes()).digest()
               + hashlib.sha256(image.text["parameters"].encode()).digest()
               + hashlib.sha256(image.text["fabula"].encode()).digest())
    VerifyKey(key.public_key).verify(message, base64.b64decode(signature))
    other = tmp_path / "other"
    async with running_image_service([tiny_model], other,
                                     signing_key=base64.b64encode(bytes(32)).decode()) as third:
        found = await third.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=png))
        assert found.signature == image_pb2.SIGNATURE_STATUS_UNKNOWN_KEY
    async with running_image_service([tiny_model], other, signing_key=base64.b64encode(bytes(32)).decode(),
                                     trusted_signing_keys=[base64.b64encode(key.public_key).decode()]) as fourth:
        found = await fourth.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=png))
        assert found.signature == image_pb2.SIGNATURE_STATUS_VALID


async def test_an_a1111_image_reads_into_an_a1111_request(image_service) -> None:
    found = await image_service.stub.ReadMetadata(image_pb2.ReadMetadataRequest(
        image=png_with_text({"parameters": A1111_TEXT})))
    assert found.source == "a1111" and found.signature == image_pb2.SIGNATURE_STATUS_ABSENT
    p = found.request.params
    assert p.prompt == "masterpiece, (red fox:1.2), snow" and p.negative_prompt == "lowres, bad hands"
    assert p.dialect == image_pb2.PROMPT_DIALECT_A1111 and p.sampler == "dpmpp_2m"
    assert p.noise_schedule == image_pb2.NOISE_SCHEDULE_KARRAS and p.steps == 24 and p.seed == 1234
    assert abs(p.guidance_scale - 6.5) < 1e-6 and (p.width, p.height) == (512, 768)
    assert p.hires.scale == 2 and p.hires.steps == 10 and abs(p.hires.strength - 0.45) < 1e-6
    assert p.hires.upscaler == "latent" and p.model == ""  # not served here
    assert found.unmapped["Model"] == "someone-elses-model" and found.unmapped["Clip skip"] == "2"
    # Runnable here once sized for the tiny test model.
    p.width, p.height, p.steps, p.hires.steps, p.hires.scale = 64, 64, 2, 2, 2
    assert len(images_of(await collect(image_service.stub.Generate(found.request)))) == 1


@pytest.mark.parametrize("png, expected", [
    (b"", "image"), (b"\x89PNG\r\n\x1a\nbroken", "image"), (b"GIF89a" + bytes(40), "image")])
async def test_unreadable_pngs_are_refused_naming_the_field(image_service, png, expected) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await image_service.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=png))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert read_error_detail(caught.value)[0].field == expected


async def test_a_png_without_metadata_says_none(image_service) -> None:
    found = await image_service.stub.ReadMetadata(image_pb2.ReadMetadataRequest(image=png_with_text({})))
    assert found.source == "none" and not found.HasField("request")


async def test_tag_suggestions_prefix_alias_and_fuzzy(image_service) -> None:
    async def suggest(query: str, limit: int = 0) -> list[image_pb2.TagSuggestion]:
        return list((await image_service.stub.SuggestTags(image_pb2.SuggestTagsRequest(query=query,
                                                                                       limit=limit))).tags)

    long = await suggest("long_h")
    assert long[0].name == "long_hair" and long[0].text == "long hair" and long[0].match == "prefix"
    spaced = await suggest("blue e")
    assert spaced[0].name == "blue_eyes"
    alias = await suggest("nekomi")
    assert alias[0].name == "cat_ears" and alias[0].matched_alias == "nekomimi"
    typo = await suggest("lighthuose")
    assert typo[0].name == "lighthouse" and typo[0].match == "fuzzy"
    ordered = await suggest("b", limit=3)
    assert len(ordered) == 3 and [tag.post_count for tag in ordered] == sorted((t.post_count for t in ordered),
                                                                               reverse=True)
    assert [tag.name for tag in await suggest("1")] == ["1girl", "1boy"]
    assert (await suggest("hatsune"))[0].category == "character"
    assert await suggest("") == []
    for bad in (dict(query="x" * 500), dict(query="a", limit=1000)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await image_service.stub.SuggestTags(image_pb2.SuggestTagsRequest(**bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert read_error_detail(caught.value)[0].field in ("query", "limit")


async def test_an_operator_vocabulary_in_the_a1111_extension_format(tiny_model, tmp_path) -> None:
    vocabulary = tmp_path / "danbooru.csv"
    vocabulary.write_text('name,category,post_count,aliases\nwhale_shark,0,812,"rhincodon,whaleshark"\n'
                          "whale,0,9000,\nsome_artist,1,40\n")
    async with running_image_service([tiny_model], tmp_path, tags_path=str(vocabulary)) as running:
        tags = (await running.stub.SuggestTags(image_pb2.SuggestTagsRequest(query="whale"))).tags
        assert [tag.name for tag in tags[:2]] == ["whale", "whale_shark"]
        assert list(tags[1].aliases) == ["rhincodon", "whaleshark"] and tags[1].post_count == 812
        by_alias = (await running.stub.SuggestTags(image_pb2.SuggestTagsRequest(query="rhinc"))).tags
        assert by_alias[0].name == "whale_shark" and by_alias[0].matched_alias == "rhincodon"
        assert (await running.stub.SuggestTags(image_pb2.SuggestTagsRequest(query="some"))).tags[0].category == \
            "artist"


def test_the_builtin_vocabulary_loads() -> None:
    index = TagIndex.load(None)
    assert len(index.tags) >= 300 and len({tag.name for tag in index.tags}) == len(index.tags)
