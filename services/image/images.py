"""Pixels in and out: decoding uploads, masks, the inpainting canvas, previews and PNG metadata.

PNGs carry the generation parameters in a "parameters" text chunk in AUTOMATIC1111's format (so
existing tools read them: A1111's PNG Info, ComfyUI, Civitai, stable-diffusion-webui forks) and
all of them as JSON in a "fabula" chunk (so Fabula can read back exactly what it wrote).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, PngImagePlugin

from services.toolkit.errors import InvalidArgument

_FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(data: bytes, field: str, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """An uploaded image, checked before its pixels are decoded (a small file can claim a huge size)."""
    if not data:
        raise InvalidArgument(field, "<empty>", "an image is required (PNG, JPEG or WebP bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except (Image.UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidArgument(field, f"<{len(data)} bytes>", f"not a PNG, JPEG or WebP image ({error})") from None
    width, height = image.size
    if width * height > max_pixels or width < 8 or height < 8:
        raise InvalidArgument(field, f"{width}x{height}",
                              f"image must be at least 8x8 and at most {max_pixels} pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidArgument(field, f"<{len(data)} bytes>", f"the image could not be decoded ({error})") from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if mode == "L" and has_alpha:
        # A mask drawn on a transparent layer: where it is opaque is redrawn.
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return image.convert(mode)


def binary_mask(mask: Image.Image) -> Image.Image:
    """White (>= 128) is redrawn, black is kept."""
    return mask.point(lambda v: 255 if v >= 128 else 0)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Smear the colours around the masked area into it (A1111's "fill"), by blurring the kept
    pixels ever less and pasting them under the mask, so far pixels get the nearest colours."""
    keep = Image.eval(mask, lambda v: 255 - v)
    filled = image.copy()
    base = Image.new("RGB", image.size, _mean_colour(image, keep))
    for radius in (256, 64, 16, 4, 1):
        # Normalised blur: blur(colour * keep) / blur(keep), so masked pixels do not bleed in.
        weight = np.asarray(keep.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)[..., None] / 255
        premultiplied = Image.fromarray((np.asarray(image, dtype=np.float32) * (np.asarray(keep)[..., None] / 255))
                                        .clip(0, 255).astype(np.uint8))
        colour = np.asarray(premultiplied.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
        valid = weight > 1e-3
        layer = np.where(valid, colour / np.maximum(weight, 1e-3), np.asarray(base, dtype=np.float32))
        base = Image.fromarray(layer.clip(0, 255).astype(np.uint8))
    filled.paste(base, mask=mask)
    return filled


def _mean_colour(image: Image.Image, keep: Image.Image) -> tuple[int, int, int]:
    pixels = np.asarray(image, dtype=np.float32)
    weights = np.asarray(keep, dtype=np.float32)[..., None] / 255
    total = weights.sum()
    if total == 0:
        return (127, 127, 127)
    return tuple(int(v) for v in (pixels * weights).sum(axis=(0, 1)) / total)


def mask_bounds(mask: Image.Image) -> tuple[int, int, int, int] | None:
    return mask.getbbox()


def expand_region(box: tuple[int, int, int, int], padding: int, size: tuple[int, int],
                  aspect: float) -> tuple[int, int, int, int]:
    """The masked region plus padding, grown to the target aspect ratio and kept inside the image."""
    left, top, right, bottom = box
    width, height = size
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(width, right + padding), min(height, bottom + padding)
    region_w, region_h = right - left, bottom - top
    if region_w / region_h < aspect:
        region_w = min(width, round(region_h * aspect))
    else:
        region_h = min(height, round(region_w / aspect))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(0, round(centre_x - region_w / 2)), width - region_w))
    top = int(min(max(0, round(centre_y - region_h / 2)), height - region_h))
    return left, top, left + region_w, top + region_h


@dataclass
class Canvas:
    """The outpainting canvas: the image on a larger field, and the mask of what is new."""

    image: Image.Image
    mask: Image.Image


def outpaint_canvas(image: Image.Image, left: int, right: int, top: int, bottom: int, overlap: int) -> Canvas:
    """Extend `image`; the mask covers the new area and `overlap` pixels of the original along
    each extended side, so the seam itself is redrawn."""
    width, height = image.size
    canvas = Image.new("RGB", (width + left + right, height + top + bottom))
    canvas.paste(image, (left, top))
    mask = Image.new("L", canvas.size, 255)
    keep = (left + (overlap if left else 0), top + (overlap if top else 0),
            left + width - (overlap if right else 0), top + height - (overlap if bottom else 0))
    if keep[2] > keep[0] and keep[3] > keep[1]:
        mask.paste(0, keep)
    original_area = Image.new("L", canvas.size, 255)
    original_area.paste(0, (left, top, left + width, top + height))
    return Canvas(fill_masked(canvas, original_area), mask)


# Linear maps from latents to RGB, for previews without the VAE (from AUTOMATIC1111's
# "Approx cheap" previews; rows are latent channels).
PREVIEW_FACTORS = {
    "sd1": (torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
                          [-0.2120, -0.2616, -0.7177]]), torch.zeros(3)),
    "sdxl": (torch.tensor([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                           [-0.3165, -0.2492, -0.2188]]), torch.tensor([0.1084, -0.0175, -0.0011])),
}


def preview_pngs(latents: torch.Tensor, family: str) -> list[bytes]:
    """Low-resolution previews (1/8 of the size) straight from the latents."""
    factors, bias = PREVIEW_FACTORS[family]
    rgb = torch.einsum("bchw,cr->bhwr", latents.float().cpu(), factors) + bias
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return [encode_png(Image.fromarray(frame)) for frame in pixels]


def encode_png(image: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        # iTXt (UTF-8) like A1111, so non-Latin prompts survive.
        info.add_itxt(key, value)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=4)
    return out.getvalue()


# --- AUTOMATIC1111's "parameters" text ---

def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(prompt: str, negative_prompt: str, fields: Mapping[str, Any]) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 28, Sampler: Euler a, ...` as A1111 writes it."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


# A1111's own pattern for the key: value list (modules/infotext_utils.py).
_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Read a "parameters" text back: (prompt, negative prompt, {key: value})."""
    *lines, last = text.strip().split("\n")
    if len(_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:"):].strip()
        target.append(line)
    fields = {}
    for key, value in _FIELD.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        fields[key.strip()] = value
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


def read_png_text(png: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(png)) as image:
        return dict(image.text)


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).copy()
