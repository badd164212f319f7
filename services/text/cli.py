"""`python -m services.text`: settings from the environment (FABULA_TEXT_*) and flags; logging and
tracing are set up before torch and transformers are imported."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.text.settings import TextSettings
from services.toolkit.model_service import add_common_flags, serve_generator, settings_overrides, start_logging

log = logging.getLogger("services.text")


def parse_args(argv: list[str] | None = None) -> TextSettings:
    parser = argparse.ArgumentParser(prog="python -m services.text", description="Fabula text generation service")
    add_common_flags(parser, "a .gguf file, a Hugging Face folder or builtin:<name>")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", choices=["auto", "int4-groupwise", "int8-dynamic", "int8-weight-only", "none"])
    parser.add_argument("--max-batch-size", type=int)
    args = parser.parse_args(argv)
    return TextSettings(**settings_overrides(parser, args))


async def run(settings: TextSettings) -> None:
    # Heavy imports only now, after logging is configured.
    from services.text.generator import TextGenerator
    from services.text.server import registrar

    await serve_generator(settings, TextGenerator(settings), registrar, audience="text")


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    start_logging(settings, "fabula-text", log, settings.models)
    asyncio.run(run(settings))
