"""`python -m services.image`: settings from the environment (FABULA_IMAGE_*) and flags; logging and
tracing are set up before torch and diffusers are imported."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from services.image.settings import ImageSettings
from services.toolkit.logs import setup_logging
from services.toolkit.tracing import setup_tracing

log = logging.getLogger("services.image")


def parse_args(argv: list[str] | None = None) -> ImageSettings:
    parser = argparse.ArgumentParser(prog="python -m services.image", description="Fabula image generation service")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model", action="append", metavar="NAME=SOURCE",
                        help="a model to serve (repeatable): a diffusers folder, a .safetensors file or "
                             "builtin:tiny-sd")
    parser.add_argument("--default-model")
    parser.add_argument("--engine", choices=["auto", "eager", "compiled", "tensorrt"])
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-batch-images", type=int)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None and key != "model"}
    if args.model:
        models = {}
        for item in args.model:
            name, sep, source = item.partition("=")
            if not sep or not name or not source:
                parser.error(f"--model expects NAME=SOURCE, got {item!r}")
            models[name] = source
        overrides["models"] = models
    return ImageSettings(**overrides)


async def run(settings: ImageSettings) -> None:
    # Heavy imports only now, after logging is configured.
    from services.image.generator import ImageGenerator
    from services.image.server import registrar
    from services.toolkit.server import serve

    generator = ImageGenerator(settings)

    async def warm_up() -> None:
        await asyncio.to_thread(generator.load)
        await generator.warm_up()

    async def on_shutdown() -> None:
        generator.close()

    await serve(settings, registrar(generator), warm_up=warm_up, on_shutdown=on_shutdown)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    setup_logging(settings.log_level, settings.log_json)
    setup_tracing("fabula-image", settings.otlp_endpoint)
    log.info("models: %s", json.dumps({k: v if isinstance(v, str) else v.model_dump() for k, v in settings.models.items()}))
    asyncio.run(run(settings))
