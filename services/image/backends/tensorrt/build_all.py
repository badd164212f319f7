"""`make engines`: build the TensorRT engines of every configured model and profile, ahead of time.

Reads the same settings as the service (FABULA_IMAGE_*), so a Kubernetes Job with the service's
ConfigMap builds exactly the engines the service will look for. Engines already in the cache
(same key: weights, network, profile, precision, GPU, TensorRT version) are kept. On a machine
without a CUDA GPU or without TensorRT it stops with a message saying so.

    python -m services.image.backends.tensorrt.build_all [--model NAME ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("services.image.backends.tensorrt.build_all")


def _fail(message: str) -> int:
    print(f"make engines: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.image.backends.tensorrt.build_all", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only this model (repeatable); default: every model")
    parser.add_argument("--dry-run", action="store_true", help="list the engines that would be built")
    args = parser.parse_args(argv)

    from services.image.settings import ImageSettings
    from services.toolkit.logs import setup_logging

    settings = ImageSettings()
    setup_logging(settings.log_level, settings.log_json)
    try:
        from services.image.backends.tensorrt.engine import tensorrt_version

        version = tensorrt_version()
    except ImportError as error:
        return _fail(str(error))
    import torch

    if not torch.cuda.is_available():
        return _fail("TensorRT engines are built on the GPU they will run on, and this machine has no CUDA GPU")
    device = torch.device(settings.device if settings.device.startswith("cuda") else "cuda")
    from services.image.backends.export_specs import Profile
    from services.image.backends.onnx_export import export_onnx
    from services.image.backends.tensorrt.engine import TrtEngine
    from services.image.backends.tensorrt.paths import onnx_path, timing_cache_path
    from services.image.backends.tensorrt.backend import plan_engines, precision
    from services.image.models import load_model

    try:
        for text in settings.engine_profiles:
            Profile.parse(text)
    except ValueError as error:
        return _fail(str(error))
    wanted = args.model or list(settings.models)
    unknown = sorted(set(wanted) - set(settings.models))
    if unknown:
        return _fail(f"unknown model(s) {unknown}; configured: {sorted(settings.models)}")
    capability = torch.cuda.get_device_capability(device)
    options = settings.model_options()
    built = kept = 0
    for name in wanted:
        # Exported in float32 (TensorRT lowers precision itself with the fp16 flag).
        model = load_model(name, options[name], cache_dir=settings.cache_dir, device=device, dtype=torch.float32)
        for planned in plan_engines(model, settings, capability, version):
            if planned.path.is_file():
                kept += 1
                print(f"kept   {planned.path}")
                continue
            if args.dry_run:
                print(f"build  {planned.path}")
                continue
            onnx_file = onnx_path(settings.engines_path, model.hash, planned.spec.name)
            if not onnx_file.is_file():
                export_onnx(planned.spec, model, onnx_file, device=device)
            TrtEngine(planned.path).build(onnx_file, profiles=[planned.spec.shapes(model, planned.profile)],
                                          fp16=precision(settings) == "fp16",
                                          timing_cache=timing_cache_path(settings.engines_path, capability, version))
            built += 1
            print(f"built  {planned.path}")
        del model
        torch.cuda.empty_cache()
    print(f"engines: {built} built, {kept} already in {settings.engines_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
