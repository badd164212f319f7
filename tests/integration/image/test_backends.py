"""Back ends up to TensorRT: ONNX exports run with onnxruntime against PyTorch, profiles, the engine
cache key, registry selection and the ahead-of-time engine build command. (TensorRT itself needs an
NVIDIA GPU; those tests are marked gpu.)"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from services.image.backends import BACKENDS, BackendUnavailable, create_backend
from services.image.backends.export_specs import NETWORKS, Profile, networks_for
from services.image.backends.onnx_export import export_onnx
from services.image.backends.tensorrt.backend import plan_engines
from services.image.backends.tensorrt.paths import EngineKey, engine_path, onnx_path
from services.image.settings import ImageSettings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {spec.name: export_onnx(spec, tiny_model, onnx_path(folder, tiny_model.hash, spec.name))
            for spec in networks_for(tiny_model)}


@pytest.mark.parametrize("network", ["clip", "unet", "vae_decoder", "vae_encoder"])
def test_onnx_export_matches_pytorch_on_other_shapes(tiny_model, exported, network) -> None:
    import onnxruntime

    spec = NETWORKS[network]
    # A batch, size and prompt length other than the traced sample's: the axes are dynamic.
    inputs = spec.sample_inputs(tiny_model, 3, 128, 64, 2, torch.device("cpu"))
    with torch.inference_mode():
        expected = spec.module(tiny_model)(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = onnxruntime.InferenceSession(str(exported[network]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == spec.inputs(tiny_model)
    got = session.run(spec.outputs(tiny_model), {name: tensor.numpy() for name, tensor in
                                                 zip(spec.inputs(tiny_model), inputs)})
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.shape == tuple(theirs.shape)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-4)


def test_profiles_parse_and_cover() -> None:
    profile = Profile.parse("1-4x512-1024", max_chunks=3)
    assert (profile.opt_batch, profile.opt_size, profile.key) == (3, 768, "b1-4_s512-1024_c3")
    assert profile.covers(4, 512, 1024, 3) and not profile.covers(5, 512, 512, 1)
    assert not profile.covers(1, 448, 512, 1) and not profile.covers(1, 512, 512, 4)
    for bad in ("1-4", "4-1x512-1024", "1-4x500-1024", "0-2x64-128"):
        with pytest.raises(ValueError, match="engine profile"):
            Profile.parse(bad)


def test_profile_shapes_per_network(tiny_model) -> None:
    profile = Profile.parse("1-2x256-512", max_chunks=2)
    unet = NETWORKS["unet"].shapes(tiny_model, profile)
    # Latents are 1/8 of the pixels; guidance doubles the rows; prompts up to 2 chunks of 77.
    assert unet["sample"] == ((1, 4, 32, 32), (4, 4, 48, 48), (4, 4, 64, 64))
    assert unet["encoder_hidden_states"][2] == (4, 154, 64)
    assert NETWORKS["clip"].shapes(tiny_model, profile)["input_ids"] == ((1, 77), (1, 77), (2, 77))
    assert NETWORKS["vae_decoder"].shapes(tiny_model, profile)["latent"][2] == (2, 4, 64, 64)


def test_engine_path_is_a_cache_key_of_everything_that_invalidates_an_engine(tmp_path) -> None:
    key = EngineKey("ab" * 32, "unet", Profile.parse("1-4x512-1024"), "fp16", (8, 9), "10.13.3.9")
    path = engine_path(tmp_path, "anime", key)
    assert path.parent == tmp_path / "anime"
    variants = [replace(key, model_hash="cd" * 32), replace(key, network="clip"),
                replace(key, profile=Profile.parse("1-8x512-1024")), replace(key, precision="fp32"),
                replace(key, compute_capability=(9, 0)), replace(key, tensorrt_version="10.14.1")]
    paths = {engine_path(tmp_path, "anime", variant) for variant in variants}
    assert path not in paths and len(paths) == len(variants)


def test_plan_covers_every_network_and_profile(tiny_model, tmp_path) -> None:
    settings = ImageSettings(engine_dir=tmp_path, engine_profiles=["1-2x256-512", "1-4x512-768"])
    planned = plan_engines(tiny_model, settings, (8, 9), "10.13.3.9")
    assert {(p.spec.name, p.profile.key) for p in planned} == {
        (network, profile) for network in ("clip", "unet", "vae_decoder", "vae_encoder")
        for profile in ("b1-2_s256-512_c4", "b1-4_s512-768_c4")}
    assert all(p.path.parent == tmp_path / "tiny" for p in planned)


def test_registry_auto_falls_back_to_eager_on_a_cpu(tiny_model, tmp_path, caplog) -> None:
    assert set(BACKENDS) == {"eager", "compiled", "tensorrt"}
    settings = ImageSettings(cache_dir=tmp_path, backend="auto")
    with caplog.at_level("INFO"):
        backend = create_backend(tiny_model, settings, torch.device("cpu"))
    assert backend.name == "eager"
    assert "tensorrt passed over: TensorRT needs a CUDA GPU" in caplog.text


def test_registry_refuses_an_explicit_backend_that_cannot_run(tiny_model, tmp_path) -> None:
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' cannot run model tiny: TensorRT needs a CUDA GPU"):
        create_backend(tiny_model, ImageSettings(cache_dir=tmp_path, backend="tensorrt"), torch.device("cpu"))


def test_tensorrt_reports_missing_engines_not_a_build(tiny_model, tmp_path) -> None:
    reason = BACKENDS["tensorrt"].unavailable_reason(tiny_model, ImageSettings(engine_dir=tmp_path),
                                                     torch.device("cuda"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in reason
    else:
        assert "make engines" in reason


def test_make_engines_without_tensorrt_fails_with_a_message(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "services.image.backends.tensorrt.build_all"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "FABULA_IMAGE_CACHE_DIR": str(tmp_path)})
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert result.returncode == 2
        assert "TensorRT is not installed" in result.stderr and "Traceback" not in result.stderr
    else:
        pytest.skip("TensorRT is installed here")


@pytest.mark.slow
def test_compiled_backend_matches_eager(tiny_model, tmp_path) -> None:
    settings = ImageSettings(cache_dir=tmp_path, backend="compiled")
    compiled = create_backend(tiny_model, settings, torch.device("cpu"))
    eager = create_backend(tiny_model, settings.model_copy(update={"backend": "eager"}), torch.device("cpu"))
    sample, timestep, embeds = NETWORKS["unet"].sample_inputs(tiny_model, 2, 64, 64, 1, torch.device("cpu"))
    torch.testing.assert_close(compiled.unet(sample, timestep, embeds, None), eager.unet(sample, timestep, embeds, None),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_tensorrt_engine_builds_and_matches_pytorch(tiny_model, tmp_path) -> None:
    pytest.importorskip("tensorrt")
    from services.image.backends.tensorrt.engine import TrtEngine

    model = tiny_model
    spec = NETWORKS["unet"]
    onnx_file = export_onnx(spec, model, onnx_path(tmp_path, model.hash, "unet"))
    engine = TrtEngine(tmp_path / "unet.plan")
    engine.build(onnx_file, profiles=[spec.shapes(model, Profile.parse("1-2x64-128"))], fp16=False)
    engine.load()
    engine.activate()
    inputs = spec.sample_inputs(model, 2, 64, 64, 1, torch.device("cpu"))
    out = engine.infer({name: t.cuda() for name, t in zip(spec.inputs(model), inputs)})["latent"].cpu()
    with torch.inference_mode():
        expected = spec.module(model)(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-3)


def test_guidance_networks_export_to_onnx_and_match_pytorch(tiny_model, tmp_path) -> None:
    """The ControlNet and IP-Adapter image encoder specs (the TensorRT path's first half), checked
    with onnxruntime on shapes other than the traced ones."""
    import onnxruntime

    from services.image.backends.export_specs import ControlNetSpec, ImageEncoderSpec
    from services.image.control import build_tiny_controlnet
    from services.image.references import build_tiny_ip_adapter
    from diffusers import ControlNetModel
    from transformers import CLIPVisionModelWithProjection

    network = ControlNetModel.from_pretrained(str(build_tiny_controlnet(tmp_path / "cn", tiny_model.unet)),
                                              local_files_only=True).eval()
    encoder = CLIPVisionModelWithProjection.from_pretrained(
        str(build_tiny_ip_adapter(tmp_path / "ip", tiny_model.unet) / "image_encoder"), local_files_only=True).eval()
    for spec, shape in ((ControlNetSpec(network=network), (3, 128, 64, 2)), (ImageEncoderSpec(encoder=encoder),
                                                                             (3, 0, 0, 1))):
        path = export_onnx(spec, tiny_model, tmp_path / f"{spec.name}.onnx")
        inputs = spec.sample_inputs(tiny_model, *shape, torch.device("cpu"))
        with torch.inference_mode():
            expected = spec.module(tiny_model)(*inputs)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == spec.inputs(tiny_model)
        got = session.run(spec.outputs(tiny_model), {name: tensor.numpy() for name, tensor in
                                                     zip(spec.inputs(tiny_model), inputs)})
        assert len(got) == len(expected) == len(spec.outputs(tiny_model))
        for ours, theirs in zip(got, expected, strict=True):
            assert ours.shape == tuple(theirs.shape)
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-4)
        shapes = spec.shapes(tiny_model, Profile.parse("1-4x512-1024"))
        assert set(shapes) == set(spec.inputs(tiny_model))
