"""How a model's networks run: one interface, implementations chosen from a registry.

- `eager`: the PyTorch modules as they are (CPU or GPU).
- `compiled`: torch.compile; on a GPU with CUDA graphs for static shapes.
- `tensorrt`: TensorRT engines built ahead of time (`make engines`), GPU only.

The pipeline only calls `Backend` methods; what a network is made of for export (input names,
dynamic axes, profiles) lives in `export_specs.py` and its ONNX export in `onnx_export.py`.
Everything TensorRT is in `tensorrt/`: the back end that runs a model's engines
(`tensorrt/backend.py`), one compiled engine file built, loaded and run (`tensorrt/engine.py`),
where engine files are stored (their path is their cache key, `tensorrt/paths.py`) and the
ahead-of-time build (`tensorrt/build_all.py`).
"""

from services.image.backends.base import BACKENDS, Backend, BackendUnavailable, create_backend, register_backend

# Importing the implementations registers them.
from services.image.backends import compiled, eager  # noqa: E402,F401  isort: skip
from services.image.backends.tensorrt import backend as tensorrt_backend  # noqa: E402,F401  isort: skip

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "create_backend", "register_backend"]
