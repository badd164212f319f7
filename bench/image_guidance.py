"""Image guidance: a control image and a reference image through the image service against
diffusers' own ControlNet + IP-Adapter pipeline called directly.

Both sides run the default tiny SD-1.x model with its built-in tiny ControlNet and IP-Adapter
(built from fixed seeds into the service's cache; the direct side loads the same files, the
IP-Adapter through `load_ip_adapter` on its own copy of the UNet) at 512x512, in alternating
rounds, as bench/image.py does for plain text to image: the service in its own process
(`python -m services.image`, gRPC streaming, Canny preprocessing, PNG with metadata) against
StableDiffusionControlNetPipeline in this process with the same preprocessed control image,
reference image, sampler, steps, guidance, scales and seed. Regional prompting (characters) has no
diffusers pipeline to compare with and is not measured here.

`python -m bench image_guidance` (or `python -m bench.image_guidance`).
"""

from __future__ import annotations

import asyncio
import copy
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 512
STEPS = 8
GUIDANCE = 7.0
ROUNDS = 5
CONTROL_SCALE = 0.8
REFERENCE_SCALE = 0.6
PROMPT = "a lighthouse on a cliff at dusk, storm clouds, watercolor"
NEGATIVE = "blurry"


def _service_env(port: int) -> dict[str, str]:
    return {"FABULA_IMAGE_PORT": str(port), "FABULA_IMAGE_BACKEND": "eager", "FABULA_IMAGE_WARMUP_STEPS": "1",
            "FABULA_IMAGE_METRICS_PORT": "0", "FABULA_IMAGE_LOG_LEVEL": "WARNING"}


def _images() -> tuple[bytes, bytes]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(0)
    source = Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8)).resize((SIZE, SIZE))
    ImageDraw.Draw(source).ellipse((128, 96, 384, 448), outline="white", width=12)
    reference = Image.fromarray((rng.rand(16, 16, 3) * 255).astype(np.uint8)).resize((256, 256))
    out = []
    for image in (source, reference):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


async def _measure() -> dict:
    import torch
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline
    from PIL import Image

    from bench.processes import cpu_seconds, free_port, grpc_serving, running_processes, signed_channel
    from fabula.image.v1 import image_pb2, image_pb2_grpc
    from services.image.attention import plain_processors
    from services.image.control import build_tiny_controlnet
    from services.image.models import load_model
    from services.image.preprocessors import canny
    from services.image.references import TINY_WEIGHTS_FILE, build_tiny_ip_adapter
    from services.image.settings import DEFAULT_MODEL_SOURCE, ImageSettings, ModelOptions

    settings = ImageSettings()
    model = load_model("tiny-sd", ModelOptions(source=DEFAULT_MODEL_SOURCE), cache_dir=settings.cache_dir,
                       device=torch.device("cpu"), dtype=torch.float32)
    models = settings.cache_dir / "models"
    controlnet = ControlNetModel.from_pretrained(
        str(build_tiny_controlnet(models / f"tiny-controlnet-sd1-{model.short_hash}", model.unet)),
        local_files_only=True).eval()
    adapter = build_tiny_ip_adapter(models / f"tiny-ip-adapter-sd1-{model.short_hash}", model.unet)
    unet = copy.deepcopy(model.unet)
    unet.set_attn_processor(plain_processors(unet))
    pipe = StableDiffusionControlNetPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=unet,
        controlnet=controlnet, scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_ip_adapter(str(adapter), subfolder="", weight_name=TINY_WEIGHTS_FILE,
                         image_encoder_folder="image_encoder", local_files_only=True)
    pipe.set_ip_adapter_scale(REFERENCE_SCALE)
    pipe.set_progress_bar_config(disable=True)
    source, reference = _images()
    control_image = canny(Image.open(io.BytesIO(source)).convert("RGB"), 100, 200)
    reference_image = Image.open(io.BytesIO(reference)).convert("RGB")

    def request(seed: int) -> image_pb2.GenerateRequest:
        return image_pb2.GenerateRequest(
            params=image_pb2.GenerationParams(
                prompt=PROMPT, negative_prompt=NEGATIVE, quality_tags=False, negative_preset="none", width=SIZE,
                height=SIZE, steps=STEPS, guidance_scale=GUIDANCE, sampler="euler", seed=seed),
            controls=[image_pb2.Control(kind=image_pb2.CONTROL_KIND_CANNY, image=source, strength=CONTROL_SCALE)],
            references=[image_pb2.ReferenceImage(image=reference, strength=REFERENCE_SCALE)])

    def direct(seed: int) -> tuple[float, float]:
        cpu, started = cpu_seconds(), time.perf_counter()
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=control_image, ip_adapter_image=reference_image,
             height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
             controlnet_conditioning_scale=CONTROL_SCALE, generator=torch.Generator().manual_seed(seed))
        return time.perf_counter() - started, cpu_seconds() - cpu

    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as workdir, \
            running_processes(["services.image"], _service_env(port), Path(workdir) / "image.log",
                              lambda: grpc_serving(address), start_timeout_s=300) as (process,):
        channel = signed_channel(address, "image")
        stub = image_pb2_grpc.ImageServiceStub(channel)

        async def service(seed: int) -> tuple[float, float]:
            cpu, started = cpu_seconds(process.pid), time.perf_counter()
            images = [e async for e in stub.Generate(request(seed)) if e.WhichOneof("event") == "image"]
            assert len(images) == 1
            return time.perf_counter() - started, cpu_seconds(process.pid) - cpu

        try:
            await service(0)  # first-call allocations on both sides
            direct(0)
            service_runs, direct_runs = [], []
            for round_ in range(ROUNDS):
                if round_ % 2:
                    direct_runs.append(direct(round_))
                    service_runs.append(await service(round_))
                else:
                    service_runs.append(await service(round_))
                    direct_runs.append(direct(round_))
                print(f"   round {round_ + 1}: service {service_runs[-1][0]:.2f} s ({service_runs[-1][1]:.2f} s CPU), "
                      f"direct {direct_runs[-1][0]:.2f} s ({direct_runs[-1][1]:.2f} s CPU)", flush=True)
        finally:
            await channel.close()

    median = statistics.median
    figures = {
        "service_seconds_512": round(median(r[0] for r in service_runs), 3),
        "direct_diffusers_seconds_512": round(median(r[0] for r in direct_runs), 3),
        "service_cpu_seconds_512": round(median(r[1] for r in service_runs), 3),
        "direct_diffusers_cpu_seconds_512": round(median(r[1] for r in direct_runs), 3),
        "threads": torch.get_num_threads(),
        "load_average_1m_end": round(os.getloadavg()[0], 2),
    }
    ratios = {
        # direct time / service time (1.0 = no overhead; target >= 0.95), the median of the rounds' ratios.
        "control_reference_service_vs_direct": median(d[0] / s[0] for d, s in zip(direct_runs, service_runs)),
        "control_reference_service_vs_direct_cpu": median(d[1] / s[1] for d, s in zip(direct_runs, service_runs)),
    }
    summary = (
        f"Tiny SD-1.x default model with its built-in tiny ControlNet and IP-Adapter, {SIZE}x{SIZE}, {STEPS} Euler "
        f"steps, guidance {GUIDANCE}, one Canny control (scale {CONTROL_SCALE}) and one reference image (scale "
        f"{REFERENCE_SCALE}), CPU, eager back end, {torch.get_num_threads()} torch threads on each side. Median of "
        f"{ROUNDS} alternating rounds: the image service in its own process (`python -m services.image`; gRPC "
        f"streaming, Canny preprocessing, PNG with metadata) against StableDiffusionControlNetPipeline with "
        f"diffusers' IP-Adapter on the same components in the benchmark's process; "
        f"`control_reference_service_vs_direct` = direct wall time / service wall time (target >= 0.95), "
        f"`..._cpu` the same with CPU time per image."
    )
    return {"figures": figures, "ratios": ratios, "summary": summary}


def run() -> dict:
    return asyncio.run(_measure())


if __name__ == "__main__":
    # `python -m bench.image_guidance` is `python -m bench image_guidance`: one place records and prints results.
    from bench.__main__ import main

    sys.exit(main(["image_guidance"]))
