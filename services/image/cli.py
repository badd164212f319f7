"""`python -m services.image`: settings from the environment (FABULA_IMAGE_*) and flags; logging and
tracing are set up before torch and diffusers are imported."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.image.settings import ImageSettings
from services.toolkit.model_service import add_common_flags, serve_generator, settings_overrides, start_logging

log = logging.getLogger("services.image")


def parse_args(argv: list[str] | None = None) -> ImageSettings:
    parser = argparse.ArgumentParser(prog="python -m services.image", description="Fabula image generation service")
    add_common_flags(parser, "a diffusers folder, a .safetensors file, builtin:tiny-sd or builtin:tiny-sdxl")
    parser.add_argument("--backend", choices=["auto", "eager", "compiled", "tensorrt"])
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--max-batch-images", type=int)
    parser.add_argument("--upscaler-path", help="an upscaler model file (ESRGAN family), served by its file's stem")
    parser.add_argument("--tags-path", help="tag vocabulary CSV (A1111 tag-autocomplete format)")
    args = parser.parse_args(argv)
    return ImageSettings(**settings_overrides(parser, args))


async def run(settings: ImageSettings) -> None:
    # Heavy imports only now, after logging is configured.
    from services.image.generator import ImageGenerator
    from services.image.server import registrar

    await serve_generator(settings, ImageGenerator(settings), registrar, audience="image")


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    models = {name: value if isinstance(value, str) else value.model_dump() for name, value in settings.models.items()}
    start_logging(settings, "fabula-image", log, models)
    asyncio.run(run(settings))
