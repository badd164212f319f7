"""The image service in-process on a free port, over the tiny seeded SD-1.x (and SDXL) models."""

from __future__ import annotations

import io
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from fabula.image.v1 import image_pb2, image_pb2_grpc
from services.image.generator import ImageGenerator
from services.image.models import LoadedModel, load_model
from services.image.server import registrar
from services.image.settings import ImageSettings, ModelOptions
from services.image.tiny import build_tiny_sd, build_tiny_sdxl
from services.toolkit.server import RunningServer, start_server


@dataclass
class RunningImage:
    stub: image_pb2_grpc.ImageServiceStub
    generator: ImageGenerator
    server: RunningServer
    channel: grpc.aio.Channel
    address: str

    def batcher(self, name: str = "tiny"):
        return self.generator.batchers[name]


@asynccontextmanager
async def running_image_service(models: list[LoadedModel], tmp: Path, **overrides):
    values = dict(models={model.name: model.source for model in models}, cache_dir=tmp, backend="eager",
                  warmup_steps=0, max_batch_images=8, max_queue=8)
    values.update(overrides)
    settings = ImageSettings(**values)
    generator = ImageGenerator(settings)
    for model in models:
        generator.add_model(model)
    server = await start_server(registrar(generator))
    address = f"127.0.0.1:{server.port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield RunningImage(image_pb2_grpc.ImageServiceStub(channel), generator, server, channel, address)
    finally:
        await channel.close()
        await server.stop(0)
        generator.close()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("image-models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_model(tiny_folder, tmp_path_factory) -> LoadedModel:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_model("tiny", ModelOptions(source=str(tiny_folder)), cache_dir=tmp_path_factory.mktemp("image-cache"),
                      device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("image-models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_model(tiny_sdxl_folder, tmp_path_factory) -> LoadedModel:
    return load_model("xl", ModelOptions(source=str(tiny_sdxl_folder)),
                      cache_dir=tmp_path_factory.mktemp("image-cache"), device=torch.device("cpu"),
                      dtype=torch.float32)


@pytest.fixture
async def image_service(tiny_model, tmp_path):
    async with running_image_service([tiny_model], tmp_path) as running:
        yield running


@pytest.fixture
def image_service_with(tiny_model, tmp_path):
    """`async with image_service_with(max_queue=..., ...) as running:` for tests needing their own settings."""
    return lambda **overrides: running_image_service([tiny_model], tmp_path, **overrides)


def params(**overrides) -> image_pb2.GenerationParams:
    """Small, fast, deterministic parameters (64x64, 2 steps, fixed seed)."""
    values = dict(prompt="a castle at dawn, watercolor", width=64, height=64, steps=2, seed=1234, sampler="euler")
    values.update(overrides)
    return image_pb2.GenerationParams(**values)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


async def collect(call) -> list[image_pb2.GenerateResponse]:
    return [event async for event in call]


def images_of(events) -> list[image_pb2.Image]:
    return [event.image for event in events if event.WhichOneof("event") == "image"]


@pytest.fixture(scope="session")
def builtin_tiny(tiny_folder, tmp_path_factory):
    """The built-in model, loaded as `builtin:tiny-sd` (so its PNGs say builtin_model), from the
    session's build of it rather than a second one."""
    cache = tmp_path_factory.mktemp("builtin-cache")
    (cache / "models").mkdir()
    (cache / "models" / "tiny-sd").symlink_to(tiny_folder, target_is_directory=True)
    return load_model("tiny", ModelOptions(source="builtin:tiny-sd"), cache_dir=cache, device=torch.device("cpu"),
                      dtype=torch.float32)


def noise_image(seed: int = 3) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))
