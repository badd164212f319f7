"""Images: generation settings (`ImageSettings`, the image service's request names), and the
stored picture, an `images` object whose plaintext is the PNG file itself, metadata chunks and
all, encrypted like every object. Its thumbnail for the library is a second `images` object with
the derived id `<image id>_thumb` (docs/formats.md, "Derived objects"), whose data key is
derived from the image's, so the keystore grows by one key per picture, not two.

Images are never inline in a story: an illustration block of the story content names the
image's id, its caption and the exact settings it was generated with.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from fabula_sdk.documents import codec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMBNAIL_SUFFIX = "_thumb"
THUMBNAIL_MAX_SIDE = 256


def thumbnail_id(image_id: str) -> str:
    return image_id + THUMBNAIL_SUFFIX


@dataclass
class ImageSettings:
    """How an image is (or was) generated. As a story's image defaults `prompt` is empty and
    `seed` null; in an illustration block they are what produced the picture."""

    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    negative_preset: str = ""  # the undesired-content preset
    quality_tags: bool = True  # the quality toggle
    width: int = 512
    height: int = 512
    steps: int = 28
    sampler: str = ""
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def request(self) -> dict[str, Any]:
        """The image service's request fields (the SDK's `ImageClient` keyword arguments)."""
        body = codec.encode(self)
        return {key: value for key, value in body.items() if value is not None and value != ""}


@dataclass
class ImageDocument:
    """A stored picture: the PNG file's bytes, and its text chunks (tEXt/iTXt keywords and values,
    which is where the image service writes the generation parameters)."""

    png: bytes

    @property
    def metadata(self) -> dict[str, str]:
        return png_text_chunks(self.png)

    def check(self, what: str = "image") -> ImageDocument:
        if not self.png.startswith(PNG_SIGNATURE):
            raise codec.DocumentError(f"{what}: not a PNG file (the signature is missing)")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) from the PNG header."""
        self.check()
        width, height = struct.unpack(">II", self.png[16:24])
        return width, height


def png_text_chunks(png: bytes) -> dict[str, str]:
    """The tEXt, zTXt and iTXt chunks of a PNG file, keyword → text (the later one wins)."""
    if not png.startswith(PNG_SIGNATURE):
        raise codec.DocumentError("image: not a PNG file (the signature is missing)")
    chunks: dict[str, str] = {}
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        data = png[offset + 8:offset + 8 + length]
        offset += 12 + length
        try:
            if kind == b"tEXt":
                keyword, _, text = data.partition(b"\x00")
                chunks[keyword.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                keyword, _, rest = data.partition(b"\x00")
                chunks[keyword.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                keyword, _, rest = data.partition(b"\x00")
                compressed, _method, rest = rest[0], rest[1], rest[2:]
                _language, _, rest = rest.partition(b"\x00")
                _translated, _, text = rest.partition(b"\x00")
                chunks[keyword.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
            elif kind == b"IEND":
                break
        except (zlib.error, UnicodeDecodeError, IndexError):
            continue  # a damaged text chunk does not make the picture unreadable
    return chunks


def make_thumbnail(png: bytes, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """A PNG at most `max_side` pixels on its longer side (needs Pillow; without it, pass the
    thumbnail to `DocumentStore.store_image` yourself)."""
    try:
        from PIL import Image
    except ImportError as error:
        raise RuntimeError("making thumbnails needs Pillow (pip install pillow), or pass the thumbnail's "
                           "PNG bytes yourself") from error
    import io

    with Image.open(io.BytesIO(png)) as picture:
        picture.thumbnail((max_side, max_side))
        out = io.BytesIO()
        picture.save(out, format="PNG", optimize=True)
    return out.getvalue()
