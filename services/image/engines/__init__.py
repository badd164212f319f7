"""How a model's networks run: one interface, implementations chosen from a registry.

- `eager`: the PyTorch modules as they are (CPU or GPU).
- `compiled`: torch.compile; on a GPU with CUDA graphs for static shapes.
- `tensorrt`: TensorRT engines built ahead of time (`make engines`), GPU only.

The pipeline only calls `Engine` methods; what a network is made of for export (input names,
dynamic axes, profiles) lives in `export_specs.py`, how an engine file is built and run in
`tensorrt/engine.py`, and where it is stored (its path is its cache key) in `tensorrt/paths.py`.
"""

from services.image.engines.base import ENGINES, Engine, EngineUnavailable, create_engine, register_engine

# Importing the implementations registers them.
from services.image.engines import compiled, eager, tensorrt_engine  # noqa: E402,F401  isort: skip

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "create_engine", "register_engine"]
