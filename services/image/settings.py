"""The image service's settings (env prefix FABULA_IMAGE_, or CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.toolkit.settings import ServiceSettings

DEFAULT_MODEL_SOURCE = "builtin:tiny-sd"


class IPAdapterOptions(BaseModel):
    """A model's IP-Adapter (reference images): local files, loaded with diffusers' `load_ip_adapter`."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(description="the IP-Adapter weights file (.safetensors or .bin, e.g. ip-adapter_sd15.safetensors), "
                                     "or builtin:tiny-ip-adapter")
    image_encoder: str | None = Field(None, description="the CLIP vision encoder folder (transformers "
                                                        "CLIPVisionModelWithProjection); None = image_encoder/ "
                                                        "beside the weights")


class ModelOptions(BaseModel):
    """One served model: where it is and its per-model defaults (all optional but `source`)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="a diffusers folder, a single-file .safetensors checkpoint, or "
                                    "builtin:tiny-sd / builtin:tiny-sdxl")
    family: Literal["auto", "sd1", "sdxl"] = "auto"
    config: str | None = Field(None, description="a single-file checkpoint's configs (it holds only weights): a "
                                                 "local diffusers folder of the same architecture, or builtin:<name>; "
                                                 "required, as no hub is reachable")
    quality_tags: str | None = Field(None, description="tags the quality toggle adds; None = the family's")
    quality_tags_position: Literal["prepend", "append"] | None = None
    negative_presets: dict[str, str] | None = Field(None, description="undesired-content presets; None = NovelAI's")
    default_negative_preset: str | None = None
    width: int | None = Field(None, ge=64, le=4096, multiple_of=64)
    height: int | None = Field(None, ge=64, le=4096, multiple_of=64)
    steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    sampler: str | None = None
    ip_adapter: IPAdapterOptions | None = Field(
        None, description="reference images (vibe transfer); None = none, except builtin models, which get "
                          "builtin:tiny-ip-adapter")
    controlnets: dict[str, str] | None = Field(
        None, description="ControlNets by name → a local diffusers ControlNetModel folder or builtin:tiny-controlnet; "
                          "a control of kind K uses the one named K (canny, lineart, scribble, pose, depth, "
                          "background_removal) unless it names another. None = none, except builtin models, which "
                          "get builtin:tiny-controlnet for every kind")


class ImageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FABULA_IMAGE_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    models: dict[str, str | ModelOptions] = Field(
        default_factory=lambda: {"tiny-sd": DEFAULT_MODEL_SOURCE},
        description='name → source or options, as JSON in the environment, e.g. {"anime": "/models/anime", '
                    '"furry": {"source": "/models/furry.safetensors", "quality_tags": "best quality"}}')
    default_model: str = Field("", description="model used when a request names none; empty = the first")
    cache_dir: Path = Field(Path("~/.cache/fabula/image").expanduser(),
                            description="where the built-in model is built and model hashes are remembered")
    engine_dir: Path | None = Field(None, description="TensorRT engines and ONNX exports; None = cache_dir/engines")
    backend: Literal["auto", "eager", "compiled", "tensorrt"] = Field(
        "auto", description="how the networks run; 'auto': tensorrt when installed with built engines on a GPU, "
                            "else compiled on a GPU, else eager")
    engine_profiles: list[str] = Field(
        default_factory=lambda: ["1-4x512-1024"],
        description="TensorRT optimisation profiles, each 'minbatch-maxbatch x minsize-maxsize' in pixels "
                    "(make engines builds one engine per model and profile)")
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="'auto': float16 on a GPU, float32 on a CPU")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per core")
    worker_nice: int = Field(10, ge=0, le=19, description="how much lower the denoising thread's CPU priority is "
                             "than the process's (a nice value): where the cores are shared, request handling and "
                             "the text service preempt it; 0 = the same priority")
    max_batch_images: int = Field(8, ge=1, le=64, description="images denoised together in one UNet call")
    max_queue: int = Field(16, ge=0, description="requests waiting beyond the batch; more get RESOURCE_EXHAUSTED")
    max_generations_per_user: int = Field(2, ge=1, description="one user's requests running or waiting at once, "
                                                               "per model; more get RESOURCE_EXHAUSTED")
    max_pixels: int = Field(1024 * 1024, ge=64 * 64, description="largest width x height generated")
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64, description="largest uploaded image (or outpainted canvas)")
    max_steps: int = Field(150, ge=1, le=1000)
    max_images: int = Field(8, ge=1, le=64, description="images per request")
    max_prompt_chars: int = Field(20_000, ge=1)
    max_prompt_chunks: int = Field(4, ge=1, le=32,
                                   description="77-token chunks a prompt may use; further words are dropped "
                                               "and reported")
    max_references: int = Field(4, ge=0, le=16, description="reference images per request")
    max_controls: int = Field(4, ge=0, le=16, description="control images per request")
    max_characters: int = Field(6, ge=0, le=16, description="character prompts per request")
    depth_model: Path | None = Field(None, description="a local transformers depth-estimation folder (DPT, "
                                                      "Depth Anything) for depth controls; None = depth is refused")
    background_removal_model: Path | None = Field(
        None, description="a local U2-Net-style ONNX file (one 1x3xHxW input, a saliency map out, as rembg's "
                          "u2net.onnx) for background-removal controls; None = refused")
    warmup_steps: int = Field(1, ge=0, description="denoising steps run per model at start-up before SERVING")
    upscalers: dict[str, Path] = Field(
        default_factory=dict,
        description='upscaler models (ESRGAN family, read by spandrel) by name, as JSON in the environment, e.g. '
                    '{"4x-ultrasharp": "/models/4x-UltraSharp.pth"}; without any, Lanczos resampling')
    upscaler_path: Path | None = Field(
        None, description="one upscaler model file, served as the upscaler named by its file's stem (a shortcut "
                          "for `upscalers`)")
    upscaler_tile: int = Field(512, ge=16, le=4096, description="tile size (pixels) an upscaler model works in")
    signing_key: str = Field("", repr=False, description="Ed25519 seed (base64 or 64 hex digits) the PNGs are "
                                                        "signed with; empty = the key file")
    signing_key_file: Path | None = Field(
        None, description="where the signing key is kept when signing_key is empty; created (mode 0600) on first "
                          "start; None = cache_dir/signing-key")
    trusted_signing_keys: list[str] = Field(
        default_factory=list, description="further Ed25519 public keys (base64) whose signatures verify, e.g. "
                                          "the key before a rotation")
    tags_path: Path | None = Field(None, description="tag vocabulary CSV in the A1111 tag-autocomplete format "
                                                     "(name,category,post_count,\"alias,alias\"); None = the "
                                                     "built-in list")

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, models: dict) -> dict:
        if not models:
            raise ValueError("at least one model is needed")
        return models

    @model_validator(mode="after")
    def _default_is_served(self) -> ImageSettings:
        if self.default_model and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models {sorted(self.models)}")
        return self

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.models))

    def model_options(self) -> dict[str, ModelOptions]:
        return {name: value if isinstance(value, ModelOptions) else ModelOptions(source=value)
                for name, value in self.models.items()}

    def upscaler_files(self) -> dict[str, Path]:
        files = dict(self.upscalers)
        if self.upscaler_path is not None:
            files.setdefault(self.upscaler_path.stem, self.upscaler_path)
        return files

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.cache_dir / "signing-key"

    @property
    def engines_path(self) -> Path:
        return self.engine_dir or self.cache_dir / "engines"
