"""Several characters: a base prompt plus per-character prompts, each steering only its region.

As NovelAI V4's character prompts and A1111's regional prompter (attention mode) do it, over the
same UNet: every character's prompt is encoded like the base prompt and its tokens are appended
to the base prompt's in the text context; the cross-attention layers (attention.py) let a latent
position attend to a character's tokens only inside the character's region. Outside every
region a position sees the base prompt alone. The unguided (negative) rows are built the same
way from the negative prompt and each character's own undesired content.

Regions are fractions of the canvas (left, top, width, height), so a request keeps its layout at
any size; NovelAI V4's position grid (columns A-E, rows 1-5, "C3" the centre) maps to a box half
the canvas's width and height centred on the grid point, clipped to the canvas. A latent cell
belongs to a region when its centre lies inside it; a region smaller than one cell gets the
cell under its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from services.toolkit.errors import InvalidArgument

GRID_COLUMNS = "ABCDE"
GRID_ROWS = "12345"
# The box a grid position stands for, as a fraction of the canvas's side.
GRID_BOX = 0.5


@dataclass
class RawCharacter:
    """A character prompt as the caller sent it (unvalidated)."""

    prompt: str = ""
    negative_prompt: str = ""
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0
    height: float = 0.0
    center: str = ""


@dataclass(frozen=True)
class Character:
    prompt: str
    negative_prompt: str
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the canvas
    center: str = ""  # the grid position it was given as, if any


def grid_box(field: str, center: str) -> tuple[float, float, float, float]:
    text = center.strip().upper()
    if len(text) != 2 or text[0] not in GRID_COLUMNS or text[1] not in GRID_ROWS:
        raise InvalidArgument(field, center, "must be a grid position: a column A-E and a row 1-5, e.g. C3")
    cx = (GRID_COLUMNS.index(text[0]) + 0.5) / len(GRID_COLUMNS)
    cy = (GRID_ROWS.index(text[1]) + 0.5) / len(GRID_ROWS)
    half = GRID_BOX / 2
    return max(0.0, cx - half), max(0.0, cy - half), min(1.0, cx + half), min(1.0, cy + half)


def check_characters(raw: list[RawCharacter], *, max_characters: int, max_prompt_chars: int) -> list[Character]:
    """Validate the character prompts (InvalidArgument naming `characters[i].field`)."""
    if len(raw) > max_characters:
        raise InvalidArgument("characters", f"<{len(raw)} characters>", f"at most {max_characters} are allowed")
    characters = []
    for index, item in enumerate(raw):
        where = f"characters[{index}]"
        if not item.prompt.strip():
            raise InvalidArgument(f"{where}.prompt", item.prompt, "a character needs a prompt")
        for name, text in (("prompt", item.prompt), ("negative_prompt", item.negative_prompt)):
            if len(text) > max_prompt_chars:
                raise InvalidArgument(f"{where}.{name}", text, f"must be at most {max_prompt_chars} characters")
        rectangle = (item.x, item.y, item.width, item.height)
        if item.center:
            if any(rectangle):
                raise InvalidArgument(f"{where}.center", item.center, "give either a grid position or a rectangle "
                                                                     "(x, y, width, height), not both")
            box = grid_box(f"{where}.center", item.center)
        elif not any(rectangle):
            box = (0.0, 0.0, 1.0, 1.0)
        else:
            for name, value in zip(("x", "y", "width", "height"), rectangle):
                if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                    raise InvalidArgument(f"{where}.{name}", value, "must be a fraction of the canvas, 0 to 1")
            for name, value in (("width", item.width), ("height", item.height)):
                if value <= 0:
                    raise InvalidArgument(f"{where}.{name}", value, "must be above 0")
            # A little slack for fractions computed by clients (0.1 + 0.9 is 1.0000000000000002).
            if item.x + item.width > 1.0 + 1e-6:
                raise InvalidArgument(f"{where}.width", item.width,
                                      f"the region leaves the canvas: x + width = {item.x + item.width:g} > 1")
            if item.y + item.height > 1.0 + 1e-6:
                raise InvalidArgument(f"{where}.height", item.height,
                                      f"the region leaves the canvas: y + height = {item.y + item.height:g} > 1")
            box = (item.x, item.y, min(1.0, item.x + item.width), min(1.0, item.y + item.height))
        characters.append(Character(item.prompt, item.negative_prompt, box, item.center.strip().upper()))
    return characters


def latent_mask(box: tuple[float, float, float, float], height: int, width: int) -> torch.Tensor:
    """[height, width] of 1 where a latent cell's centre lies in `box` (at least the cell under its centre)."""
    left, top, right, bottom = box
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    inside = ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    if not bool(inside.any()):
        row = min(height - 1, int((top + bottom) / 2 * height))
        column = min(width - 1, int((left + right) / 2 * width))
        inside[row, column] = True
    return inside.float()


def segment_masks(characters: list[Character], height: int, width: int) -> torch.Tensor:
    """[1 + characters, height, width]: the base prompt's segment of the text context attends
    everywhere, each character's only in its region."""
    return torch.stack([torch.ones(height, width)] + [latent_mask(c.box, height, width) for c in characters])
