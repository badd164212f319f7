"""What the model-serving processes (text, image) share at start-up: the `--model NAME=SOURCE`
flags, turning flags into settings overrides, and serving a generator that loads its models and
warms up before the health service says SERVING."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
from typing import Any, Callable, Protocol, TypeVar

from services.toolkit.logs import setup_logging
from services.toolkit.settings import ServiceSettings
from services.toolkit.tracing import setup_tracing

T = TypeVar("T")


class Generator(Protocol):
    def load(self) -> None: ...  # blocking: reads (or builds) the models

    async def warm_up(self) -> None: ...

    def close(self) -> None: ...


def add_common_flags(parser: argparse.ArgumentParser, model_help: str) -> None:
    """Flags every model service has; each adds its own beside them."""
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model", action="append", metavar="NAME=SOURCE",
                        help=f"a model to serve (repeatable): {model_help}")
    parser.add_argument("--default-model")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log-level")


def settings_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The flags given (None means not given, so the environment's value stands), with the
    repeated `--model NAME=SOURCE` flags as one `models` mapping."""
    overrides = {key: value for key, value in vars(args).items() if value is not None and key != "model"}
    if args.model:
        models = {}
        for item in args.model:
            name, sep, source = item.partition("=")
            if not sep or not name or not source:
                parser.error(f"--model expects NAME=SOURCE, got {item!r}")
            models[name] = source
        overrides["models"] = models
    return overrides


async def serve_generator(settings: ServiceSettings, generator: Generator, registrar, *, audience: str) -> None:
    from services.toolkit.server import serve

    async def warm_up() -> None:
        await run_in_passing_thread(generator.load)
        await generator.warm_up()

    async def on_shutdown() -> None:
        generator.close()

    await serve(settings, registrar(generator), audience=audience, warm_up=warm_up, on_shutdown=on_shutdown)


async def run_in_passing_thread(function: Callable[[], T]) -> T:
    """Run blocking `function` in a thread of its own that ends when it returns.

    Not `asyncio.to_thread` for tensor work done once (loading models): torch's OpenMP runtime
    (libgomp) keeps a pool of worker threads for each thread that has run a parallel operator, for
    as long as that thread lives, and once a process holds more of them than it has CPUs, every
    pool's workers sleep between operators instead of spinning, so each parallel operator pays a
    wake-up for as long as the executor's thread that loaded the model lives on (docs/text.md has
    the figures). This thread exits, and its pool with it, leaving the model worker
    threads' pools alone."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="passing") as executor:
        return await asyncio.get_running_loop().run_in_executor(executor, function)


def start_logging(settings: ServiceSettings, service_name: str, logger: logging.Logger, models: dict) -> None:
    """Logging and tracing first, before the heavy imports (torch, transformers, diffusers)."""
    setup_logging(settings.log_level, settings.log_json)
    setup_tracing(service_name, settings.otlp_endpoint)
    logger.info("models: %s", json.dumps(models))
