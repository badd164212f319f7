"""`python -m services.text`: settings from the environment (FABULA_TEXT_*) and flags; logging and
tracing are set up before torch and transformers are imported."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from services.text.settings import TextSettings
from services.toolkit.logs import setup_logging
from services.toolkit.tracing import setup_tracing

log = logging.getLogger("services.text")


def parse_args(argv: list[str] | None = None) -> TextSettings:
    parser = argparse.ArgumentParser(prog="python -m services.text", description="Fabula text generation service")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model", action="append", metavar="NAME=SOURCE",
                        help="a model to serve (repeatable): a .gguf file, a Hugging Face folder or builtin:<name>")
    parser.add_argument("--default-model")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", choices=["auto", "int8-dynamic", "int8-weight-only", "none"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-batch-size", type=int)
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
    return TextSettings(**overrides)


async def run(settings: TextSettings) -> None:
    # Heavy imports only now, after logging is configured.
    from services.text.generator import TextGenerator
    from services.text.server import registrar
    from services.toolkit.server import serve

    generator = TextGenerator(settings)

    async def warm_up() -> None:
        await asyncio.to_thread(generator.load)
        await generator.warm_up()

    async def on_shutdown() -> None:
        generator.close()

    await serve(settings, registrar(generator), warm_up=warm_up, on_shutdown=on_shutdown)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    setup_logging(settings.log_level, settings.log_json)
    setup_tracing("fabula-text", settings.otlp_endpoint)
    log.info("models: %s", json.dumps(settings.models))
    asyncio.run(run(settings))
