"""One TensorRT engine file: build it from ONNX, load it, run it. Knows nothing of diffusion.

Written against TensorRT 10's Python API (explicit batch networks, named I/O tensors,
`execute_async_v3`). `tensorrt` is imported inside the methods: this module must import on
machines without it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from services.image.backends.export_specs import ShapeRange

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """`tensorrt`, or an ImportError that says how to get it."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError("TensorRT is not installed: it runs on NVIDIA GPUs only; install the GPU image or "
                          "`pip install '.[tensorrt]'` on a machine with CUDA") from error
    return tensorrt


def tensorrt_version() -> str:
    return import_tensorrt().__version__


class TrtEngine:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine: Any = None
        self.context: Any = None

    def build(self, onnx_file: Path, *, profiles: list[Mapping[str, ShapeRange]], fp16: bool,
              timing_cache: Path | None = None, workspace_bytes: int | None = None) -> None:
        """Build from `onnx_file` with one optimisation profile per entry of `profiles` and write
        the serialized engine to `self.path` (atomically). The timing cache is read and updated,
        so later builds on the same GPU kind skip the kernel timing already done."""
        trt = import_tensorrt()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_file)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_file}: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        for shapes in profiles:
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in shapes.items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        log.info("building %s (this takes minutes)", self.path.name)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {self.path.name}; see its log above")
        _write_atomically(self.path, memoryview(serialized))
        if timing_cache is not None:
            _write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()))

    def load(self) -> None:
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {self.path} (built by another TensorRT version or GPU?)")

    def activate(self) -> None:
        self.context = self.engine.create_execution_context()

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = import_tensorrt()
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool,
                trt.int8: torch.int8}[self.engine.get_tensor_dtype(name)]

    def infer(self, feed: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None = None) -> dict[str, torch.Tensor]:
        """Run on CUDA tensors; returns the outputs, allocated for the shapes of this call."""
        trt = import_tensorrt()
        stream = stream or torch.cuda.current_stream()
        keep = []  # inputs cast here must outlive the asynchronous execution
        for name, tensor in feed.items():
            tensor = tensor.to(dtype=self._torch_dtype(name)).contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        stream.synchronize()
        del keep
        return outputs


def _write_atomically(path: Path, data: memoryview | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
