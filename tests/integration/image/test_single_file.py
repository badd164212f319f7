"""Single-file `.safetensors` checkpoints (the original LDM key layout), SD 1.x and SDXL, loaded
offline with a local diffusers folder as their config, against the same model's folder."""

from __future__ import annotations

import hashlib

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors import safe_open

from fabula.image.v1 import image_pb2
from services.image.models import load_model
from services.image.settings import ModelOptions
from services.toolkit.errors import FailedPrecondition
from tests.integration.image.conftest import collect, decode, images_of, params, running_image_service
from tests.integration.image.ldm_checkpoint import save_ldm_checkpoint


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # As on every machine Fabula runs on: any attempt to reach the hub fails at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def checkpoints(tiny_model, tiny_sdxl_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {"sd1": save_ldm_checkpoint(tiny_model, folder / "tiny-sd.safetensors"),
            "sdxl": save_ldm_checkpoint(tiny_sdxl_model, folder / "tiny-sdxl.safetensors")}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
async def test_single_file_checkpoint_loads_and_generates_as_its_folder(
        family, checkpoints, tiny_model, tiny_sdxl_model, tiny_folder, tiny_sdxl_folder, tmp_path) -> None:
    folder_model, config = (tiny_model, tiny_folder) if family == "sd1" else (tiny_sdxl_model, tiny_sdxl_folder)
    path = checkpoints[family]
    # The checkpoint is in the original layout (what model sites distribute), not diffusers'.
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    assert not any(k.startswith(("unet.", "down_blocks.", "text_model.")) for k in keys)

    model = load_model("file", ModelOptions(source=str(path), config=str(config)), cache_dir=tmp_path,
                       device=torch.device("cpu"), dtype=torch.float32)
    assert model.family == family  # told apart by the checkpoint's keys
    assert model.hash == hashlib.sha256(path.read_bytes()).hexdigest()  # A1111's "Model hash"
    pairs = [(model.unet, folder_model.unet), (model.vae, folder_model.vae),
             *zip(model.text_encoders, folder_model.text_encoders, strict=True)]
    for loaded, original in pairs:
        ours, theirs = loaded.state_dict(), original.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), type(loaded).__name__
    assert [t.pad_token for t in model.tokenizers] == [t.pad_token for t in folder_model.tokenizers]

    # Both served side by side: the same request gives the same pixels from either.
    async with running_image_service([folder_model, model], tmp_path) as service:
        results = []
        for name in (folder_model.name, "file"):
            request = params(model=name, prompt="a lighthouse, {storm}", negative_prompt="blurry", quality_tags=False,
                             guidance_scale=5.0, steps=2)
            image = images_of(await collect(service.stub.Generate(image_pb2.GenerateRequest(params=request))))[0]
            assert f"Model: {name}," in image.parameters
            results.append(np.asarray(decode(image.png).convert("RGB")))
        assert np.array_equal(*results)


def test_a_builtin_model_can_be_a_single_files_config(checkpoints, tiny_model, tiny_folder, tmp_path) -> None:
    # builtin:tiny-sd resolves to cache_dir/models/tiny-sd; point it at the session's build.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-sd").symlink_to(tiny_folder, target_is_directory=True)
    model = load_model("file", ModelOptions(source=str(checkpoints["sd1"]), config="builtin:tiny-sd"),
                       cache_dir=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(model.unet.conv_out.weight, tiny_model.unet.conv_out.weight)


def test_a_single_file_without_config_is_refused_before_any_download(checkpoints, tmp_path, monkeypatch) -> None:
    from diffusers import StableDiffusionPipeline

    def no_hub(*args, **kwargs):
        raise AssertionError("from_single_file was called without a config: it would reach for the hub")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", no_hub)
    with pytest.raises(FailedPrecondition, match="`config`"):
        load_model("file", ModelOptions(source=str(checkpoints["sd1"])), cache_dir=tmp_path,
                   device=torch.device("cpu"), dtype=torch.float32)
