"""The image service's own Prometheus metrics (the toolkit adds per-RPC outcomes and durations)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("fabula_image_queue_depth", "Requests waiting to start denoising", ["model"])
ACTIVE = Gauge("fabula_image_active_requests", "Requests being denoised", ["model"])
QUEUE_SECONDS = Histogram("fabula_image_queue_seconds", "Time a request waited before denoising", ["model"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
BATCH_IMAGES = Histogram("fabula_image_batch_images", "Images sharing one UNet call", ["model"],
                         buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
STEPS = Counter("fabula_image_denoise_steps_total", "UNet calls made", ["model"])
STEP_SECONDS = Histogram("fabula_image_step_seconds", "Duration of one UNet call (all images in it)", ["model"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
GENERATION_SECONDS = Histogram("fabula_image_generation_seconds", "From start of denoising to the last image",
                               ["model", "action"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
IMAGES = Counter("fabula_image_images_total", "Images generated", ["model", "action"])
OUTCOMES = Counter("fabula_image_requests_total", "Generations by outcome", ["model", "outcome"])
REJECTED = Counter("fabula_image_rejected_total", "Requests refused because the queue was full", ["model"])
