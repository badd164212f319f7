"""Export a model's networks to ONNX with dynamic axes (the first step of a TensorRT build).

Runs anywhere (no GPU, no TensorRT): the tests export each network of the tiny model and compare
onnxruntime's output with PyTorch's.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from services.image.backends.export_specs import NetworkSpec

log = logging.getLogger(__name__)

OPSET = 17
# The sample shape traced for export; every axis named in the spec stays dynamic.
SAMPLE_BATCH, SAMPLE_SIZE, SAMPLE_CHUNKS = 2, 256, 1


def export_onnx(spec: NetworkSpec, model, path: Path, *, device: torch.device | None = None) -> Path:
    """Write `spec`'s network of `model` to `path` (atomically); returns the path."""
    device = device or model.unet.device
    module = spec.module(model)
    inputs = spec.sample_inputs(model, SAMPLE_BATCH, SAMPLE_SIZE, SAMPLE_SIZE, SAMPLE_CHUNKS, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exported into a scratch folder and moved into place, so a half-written file is never taken
    # for an export (large networks write their weights beside the .onnx file).
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    try:
        target = scratch / path.name
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python control flow
            torch.onnx.export(module, inputs, str(target), input_names=spec.inputs(model),
                              output_names=spec.outputs(model), dynamic_axes=spec.axes(model),
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
        for produced in scratch.iterdir():
            os.replace(produced, path.parent / produced.name)
    finally:
        for leftover in scratch.glob("*"):
            leftover.unlink()
        scratch.rmdir()
    log.info("exported %s to %s", spec.name, path)
    return path
