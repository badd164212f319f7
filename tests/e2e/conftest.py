"""The whole stack for end-to-end tests: the real editor (SQLite file and PostgreSQL, through the
shared `editor` fixture), the real gateway served by uvicorn on a free port, and the SDK.

The SDK is synchronous while the servers run in the test's event loop, so each test runs its
SDK side in a worker thread (`await in_thread(...)`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

from fabula_sdk import FabulaClient, MINIMUM_KDF
from tests.e2e.database import Database
from tests.integration.gateway.harness import gateway_settings, serve_gateway

PASSWORD = "correct horse battery staple"


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


@pytest.fixture
async def gateway(editor):
    async with serve_gateway(gateway_settings(editor.address)) as live:
        yield live


@pytest.fixture
def database(editor) -> Database:
    return Database(editor.settings.database_url)


@pytest.fixture
def connect(gateway):
    """Makes SDK clients of the live gateway (libsodium's minimum Argon2id cost); closes them after."""
    clients: list[FabulaClient] = []

    def make(url: str | None = None) -> FabulaClient:
        client = FabulaClient.connect(url or gateway.url, kdf=MINIMUM_KDF, kdf_floor_for_tests=MINIMUM_KDF)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# --- The whole stack with the AI services: gateway + editor + text + image, in-process ---------


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """A tiny seeded text model (services/text/testing.py) with room for a story's context."""
    from services.text.models import load_model
    from services.text.testing import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("e2e-text") / "tiny", seed=0, context_window=2048)
    return load_model("tiny", str(folder), cache_dir=folder.parent / "cache", device="cpu", dtype="float32",
                      quantization="none")


@pytest.fixture(scope="session")
def builtin_image_model(tmp_path_factory):
    """The image service's built-in model (builtin:tiny-sd), loaded as the service loads it."""
    import torch

    from services.image.models import load_model
    from services.image.settings import ModelOptions

    return load_model("tiny-sd", ModelOptions(source="builtin:tiny-sd"), cache_dir=tmp_path_factory.mktemp("e2e-image"),
                      device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
async def ai_gateway(editor, tiny_text_model, builtin_image_model, tmp_path):
    """The gateway in front of the editor (each storage back end), the text service and the image service."""
    from services.image.generator import ImageGenerator
    from services.image.server import registrar as image_registrar
    from services.image.settings import ImageSettings
    from services.text.generator import TextGenerator
    from services.text.scheduler import SchedulerConfig
    from services.text.server import registrar as text_registrar
    from services.text.settings import TextSettings
    from services.toolkit.server import start_server

    text = TextGenerator(TextSettings(models={"tiny": tiny_text_model.source}, max_batch_size=4, max_queue=8,
                                      warmup_tokens=2))
    text.add_model(tiny_text_model, SchedulerConfig(max_batch_size=4, max_queue=8))
    text_server = await start_server(text_registrar(text), serving=False)
    await text.warm_up()
    await text_server.set_serving(True)
    image = ImageGenerator(ImageSettings(models={"tiny-sd": builtin_image_model.source}, cache_dir=tmp_path,
                                         backend="eager", warmup_steps=0, max_batch_images=4, max_queue=8))
    image.add_model(builtin_image_model)
    image_server = await start_server(image_registrar(image))
    try:
        settings = gateway_settings(editor.address, text_address=f"127.0.0.1:{text_server.port}",
                                    image_address=f"127.0.0.1:{image_server.port}")
        async with serve_gateway(settings) as live:
            yield live
    finally:
        await image_server.stop(0)
        image.close()
        await text_server.stop(0)
        text.close()
