"""Where engines live: the path of an engine is its cache key.

The key holds everything that makes an engine valid: the model's weights hash, the network, the
optimisation profile, the precision, the GPU's compute capability and TensorRT's version. Change
any of them and the path changes, so a stale engine is never loaded; it is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.image.backends.export_specs import Profile


@dataclass(frozen=True)
class EngineKey:
    model_hash: str
    network: str
    profile: Profile
    precision: str  # "fp16" or "fp32"
    compute_capability: tuple[int, int]
    tensorrt_version: str

    @property
    def filename(self) -> str:
        major, minor = self.compute_capability
        return (f"{self.network}.{self.model_hash[:16]}.{self.profile.key}.{self.precision}"
                f".sm{major}{minor}.trt{self.tensorrt_version}.plan")


def engine_path(engine_dir: Path, model_name: str, key: EngineKey) -> Path:
    return engine_dir / model_name / key.filename


def onnx_path(engine_dir: Path, model_hash: str, network: str) -> Path:
    # ONNX depends on the weights only (precision and profiles are TensorRT build options); a
    # folder per network keeps each one's external weight files apart.
    return engine_dir / "onnx" / model_hash[:16] / network / "model.onnx"


def timing_cache_path(engine_dir: Path, compute_capability: tuple[int, int], tensorrt_version: str) -> Path:
    # Timing measurements are reusable across models on the same GPU kind and TensorRT version.
    major, minor = compute_capability
    return engine_dir / f"timing.sm{major}{minor}.trt{tensorrt_version}.cache"
