"""Pixels in and out: uploads, masks, the outpaint canvas, PNG metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.image.images import (decode_image, encode_png, expand_region, fill_masked, format_parameters,
                                   outpaint_canvas, parse_parameters, read_png_text)
from services.image.params import fit_size
from services.toolkit.errors import InvalidArgument


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_parameters_round_trip_with_commas_quotes_and_unicode() -> None:
    fields = {"Steps": 28, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "5.5", "Seed": 7,
              "Size": "512x768", "Model": "anime, v2", "Outpaint": 'left "64"'}
    text = format_parameters("1girl, {smile}, 東京\nsecond line", "lowres, text", fields)
    data = encode_png(Image.new("RGB", (8, 8)), {"parameters": text})
    prompt, negative, parsed = parse_parameters(read_png_text(data)["parameters"])
    assert prompt == "1girl, {smile}, 東京\nsecond line" and negative == "lowres, text"
    assert parsed == {key: str(value) for key, value in fields.items()}


def test_parameters_without_negative_prompt() -> None:
    prompt, negative, parsed = parse_parameters(format_parameters("a cat", "", {"Steps": 2, "Seed": 1, "Size": "64x64"}))
    assert (prompt, negative, parsed["Steps"]) == ("a cat", "", "2")


def test_decode_image_refuses_what_is_not_an_image_or_too_large() -> None:
    with pytest.raises(InvalidArgument, match="not a PNG, JPEG or WebP") as raised:
        decode_image(b"GIF89a....", "img2img.image", max_pixels=10_000)
    assert raised.value.field == "img2img.image"
    with pytest.raises(InvalidArgument, match="at most 10000 pixels"):
        decode_image(png(Image.new("RGB", (200, 200))), "img2img.image", max_pixels=10_000)
    with pytest.raises(InvalidArgument, match="required"):
        decode_image(b"", "inpaint.mask", max_pixels=10_000)


def test_a_mask_on_a_transparent_layer_uses_its_alpha() -> None:
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((0, 0, 0, 255), (4, 4, 8, 8))  # painted black but opaque: redraw
    mask = decode_image(png(layer), "inpaint.mask", max_pixels=10_000, mode="L")
    assert mask.getbbox() == (4, 4, 8, 8)


def test_fill_spreads_the_surrounding_colour_into_the_mask() -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((0, 0, 0), (16, 16, 48, 48))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    filled = np.asarray(fill_masked(image, mask))
    assert np.abs(filled[32, 32].astype(int) - [200, 30, 30]).max() < 10
    assert np.array_equal(filled[:16], np.asarray(image)[:16])


def test_outpaint_canvas_and_mask() -> None:
    image = Image.new("RGB", (64, 32), (10, 200, 10))
    canvas = outpaint_canvas(image, left=16, right=0, top=0, bottom=8, overlap=4)
    assert canvas.image.size == canvas.mask.size == (80, 40)
    mask = np.asarray(canvas.mask)
    assert mask[:, :20].min() == 255 and mask[28:].min() == 255  # new area and overlap bands
    assert mask[:28, 20:].max() == 0  # the rest of the original is kept
    assert np.abs(np.asarray(canvas.image)[20, 2].astype(int) - [10, 200, 10]).max() < 10  # edge stretched


def test_expand_region_keeps_aspect_and_stays_inside() -> None:
    box = expand_region((90, 90, 110, 100), padding=10, size=(200, 120), aspect=2.0)
    left, top, right, bottom = box
    assert (right - left) == 2 * (bottom - top)
    assert left <= 80 and right >= 120 and 0 <= left and right <= 200 and 0 <= top and bottom <= 120


@pytest.mark.parametrize("size", [(1088, 64), (64, 1088), (320, 64), (4096, 64), (64, 64), (1000, 700)])
def test_the_size_fitted_to_an_image_keeps_max_pixels_even_for_a_long_thin_image(size):
    width, height = fit_size(*size, 128 * 128)
    assert width * height <= 128 * 128, (size, width, height)
    assert width % 64 == 0 and height % 64 == 0 and width >= 64 and height >= 64
    assert fit_size(512, 384, 1024 * 1024) == (512, 384)  # one that fits keeps its size
