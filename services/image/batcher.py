"""Continuous batching of denoising steps, run by the model's worker thread
(`services/toolkit/worker.py`, which owns the bounded queue, cancellation and the hand-over of
events to the event loop).

At every iteration the worker admits waiting jobs while the batch has room (`max_batch_images`);
the batcher then picks the group of jobs that share a shape (size and prompt length) and has
waited longest, and makes one UNet call for the whole group (jobs may be at different steps: each
row gets its own timestep). A job joins at the next step after it arrives and leaves when it is
done or cancelled, so a short request is never held up by a long one more than a step at a time.
Jobs beyond the batch wait in a queue of `max_queue`; one more is refused at once with
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import functools
import logging
import time

from services.image import hires, metrics
from services.image.events import Event, Finished
from services.image.pipeline import ImagePipeline, Job
from services.toolkit import worker
from services.toolkit.errors import FabulaError

log = logging.getLogger(__name__)

Handle = worker.Handle[Job, Event, None]


class Batcher:
    """One model's denoising loop, run by a `Worker`."""

    def __init__(self, pipeline: ImagePipeline, *, max_batch_images: int, max_queue: int,
                 max_per_user: int | None = None, worker_nice: int = 0) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model.name
        backend_limit = pipeline.backend.max_batch_images
        self.max_batch_images = min(max_batch_images, backend_limit) if backend_limit else max_batch_images
        self._active: list[Job] = []
        self.unet_calls = 0  # for tests and benchmarks: work actually done
        self._worker: worker.Worker[Job, Event, None] = worker.Worker(
            self, service="image", model=self.model, capacity=self.max_batch_images, max_queue=max_queue,
            max_per_owner=max_per_user, metrics=worker.QueueMetrics(metrics.QUEUE_DEPTH.labels(self.model), metrics.REJECTED.labels(self.model)),
            nice=worker_nice)

    # --- the caller's side (event loop thread) ---

    def reserve(self, owner: str = "", images: int = 1) -> worker.Reservation[Job, Event, None]:
        """Hold a place for `owner`'s job of `images` (RESOURCE_EXHAUSTED at once if there is none),
        before the costly preparation of the job."""
        return self._worker.reserve(owner, images)

    def submit(self, job: Job, place: worker.Reservation[Job, Event, None] | None = None) -> tuple[Handle, int]:
        """Queue `job` (in `place`, when one was reserved); returns its handle and how many requests
        are ahead of it."""
        job.emit = functools.partial(self._worker.emit, job)  # type: ignore[assignment]
        handle = place.submit(job) if place is not None else self._worker.submit(job)
        return handle, handle.queue_position

    def stop(self) -> None:
        self._worker.stop()

    @property
    def idle(self) -> bool:
        return self._worker.idle

    # --- the domain loop, on the worker thread ---

    def weight(self, job: Job) -> int:
        return job.n_images

    def admit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._admit(job)

    def iterate(self) -> None:
        self._drop_cancelled()
        if self._active:
            self._step_group()
        metrics.ACTIVE.labels(self.model).set(len(self._active))

    def mark_cancelled(self, job: Job) -> None:
        job.cancel()

    def withdraw(self, job: Job) -> None:
        self._end_cancelled(job)

    def reset(self) -> None:
        for job in self._active:
            self._free(job)
        self._active.clear()
        metrics.ACTIVE.labels(self.model).set(0)

    def retry_after_s(self) -> float:
        # A rough wait: the active jobs' remaining steps at about a second a step on a CPU. The
        # list is the worker thread's; a copy is enough for an estimate.
        remaining = max((job.total_steps - job.index for job in list(self._active) if job.timesteps is not None),
                        default=1)
        return float(max(1, min(60, remaining)))

    def _admit(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._end_cancelled(job)
            return
        metrics.QUEUE_SECONDS.labels(self.model).observe(time.perf_counter() - job.created)
        try:
            self.pipeline.check_shape(job)
            self.pipeline.prepare(job)
        except BaseException as error:  # noqa: BLE001  reported to the caller, not raised here
            self._fail(job, error)
            return
        if job.done:
            # Nothing to denoise (the upscale action): the result is ready.
            self._complete(job)
            return
        self._active.append(job)

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._active if job.cancelled.is_set()]:
            self._active.remove(job)
            self._end_cancelled(job)

    def _step_group(self) -> None:
        # The group that has waited longest for a step; everything in it shares one UNet call.
        first = min(self._active, key=lambda job: (job.last_stepped, job.created))
        group, images = [], 0
        for job in self._active:
            if job.key == first.key and images + job.n_images <= self.max_batch_images or job is first:
                group.append(job)
                images += job.n_images
        if first not in group:
            group.insert(0, first)
        started = time.perf_counter()
        try:
            self.pipeline.denoise(group)
        except BaseException as error:  # noqa: BLE001
            for job in group:
                self._active.remove(job)
                self._fail(job, error)
            return
        self.unet_calls += 1
        metrics.STEPS.labels(self.model).inc()
        metrics.STEP_SECONDS.labels(self.model).observe(time.perf_counter() - started)
        metrics.BATCH_IMAGES.labels(self.model).observe(images)
        for job in [job for job in group if job.done]:
            if hires.pending(job):
                # The hires fix's second pass: the job stays, at its new size.
                try:
                    hires.start_second_pass(self.pipeline, job)
                except BaseException as error:  # noqa: BLE001
                    self._active.remove(job)
                    self._fail(job, error)
                continue
            self._active.remove(job)
            self._complete(job)

    def _complete(self, job: Job) -> None:
        try:
            if not job.cancelled.is_set():
                self.pipeline.finish(job)
        except BaseException as error:  # noqa: BLE001
            self._fail(job, error)
            return
        now = time.perf_counter()
        action = job.request.action.value
        metrics.GENERATION_SECONDS.labels(self.model, action).observe(now - job.started)
        metrics.IMAGES.labels(self.model, action).inc(job.n_images)
        metrics.OUTCOMES.labels(self.model, "ok").inc()
        job.emit(Finished(queue_seconds=job.started - job.created, generation_seconds=now - job.started))
        self._free(job)
        self._worker.finish(job)

    def _fail(self, job: Job, error: BaseException) -> None:
        if not isinstance(error, FabulaError):
            log.error("generation failed in model %s", self.model, exc_info=error)
        metrics.OUTCOMES.labels(self.model, "error").inc()
        self._free(job)
        self._worker.fail(job, error)

    def _end_cancelled(self, job: Job) -> None:
        metrics.OUTCOMES.labels(self.model, "cancelled").inc()
        self._free(job)
        self._worker.finish(job)

    @staticmethod
    def _free(job: Job) -> None:
        # Free the job's tensors now rather than when the caller lets go of it.
        job.latents = job.embeds = job.image_latents = job.noise = job.unet_extra = job.guidance = None
        job.conditionings = []
