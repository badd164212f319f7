"""Continuous batching of denoising steps, with a bounded queue and cancellation.

One worker thread per model runs the denoising loop. At every iteration it admits waiting jobs
while the batch has room (`max_batch_images`), picks the group of jobs that share a shape (size
and prompt length) and has waited longest, and makes one UNet call for the whole group (jobs may
be at different steps: each row gets its own timestep). A job joins at the next step after it
arrives and leaves when it is done or cancelled, so a short request is never held up by a long
one more than a step at a time. Jobs beyond the batch wait in a queue of `max_queue`; one more is
refused at once with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from services.image import metrics
from services.image.events import Event, Finished
from services.image.pipeline import ImagePipeline, Job
from services.toolkit.errors import FabulaError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

_END = object()


class Handle:
    """The caller's side of a job: an async iterator over its events. Leaving the iteration
    early (client gone, deadline) cancels the job."""

    def __init__(self, batcher: Batcher, job: Job, queue: asyncio.Queue) -> None:
        self._batcher, self.job, self._queue = batcher, job, queue
        self.finished = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    self.finished = True
                    return
                if isinstance(item, BaseException):
                    self.finished = True
                    raise item
                yield item
        finally:
            if not self.finished:
                self.cancel()

    def cancel(self) -> None:
        self._batcher.cancel(self.job)


class Batcher:
    def __init__(self, pipeline: ImagePipeline, *, max_batch_images: int, max_queue: int) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model.name
        engine_limit = pipeline.engine.max_batch_images
        self.max_batch_images = min(max_batch_images, engine_limit) if engine_limit else max_batch_images
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._active_images = 0
        self._stopping = False
        self.unet_calls = 0  # for tests and benchmarks: work actually done
        self._thread = threading.Thread(target=self._run, name=f"denoise-{self.model}", daemon=True)
        self._thread.start()

    # --- the caller's side (event loop thread) ---

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> tuple[Handle, int]:
        """Queue `job`; returns its handle and how many requests are ahead of it."""
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        job.emit = emit  # type: ignore[assignment]
        with self._cond:
            if self._stopping:
                raise Unavailable("the image service is shutting down")
            starts_now = not self._waiting and self._active_images + job.n_images <= self.max_batch_images
            if len(self._waiting) >= self.max_queue and not starts_now:
                metrics.REJECTED.labels(self.model).inc()
                raise ResourceExhausted(
                    f"the image queue of model {self.model} is full ({len(self._waiting)} requests waiting); "
                    "retry shortly", retry_after_s=self._retry_after())
            ahead = len(self._waiting) + len(self._active)
            self._waiting.append(job)
            metrics.QUEUE_DEPTH.labels(self.model).set(len(self._waiting))
            self._cond.notify()
        return Handle(self, job, queue), ahead

    def _retry_after(self) -> float:
        # A rough wait: the active jobs' remaining steps at about a second a step on a CPU.
        remaining = max((job.total_steps - job.index for job in self._active if job.timesteps is not None),
                        default=1)
        return float(max(1, min(60, remaining)))

    def cancel(self, job: Job) -> None:
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                metrics.QUEUE_DEPTH.labels(self.model).set(len(self._waiting))
                metrics.OUTCOMES.labels(self.model, "cancelled").inc()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.emit(Unavailable("the image service is shutting down"))
            self._waiting.clear()
            self._cond.notify()
        self._thread.join(timeout=30)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._active

    # --- the worker thread ---

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.wait()
                if self._stopping and not self._active:
                    return
                admitted = []
                while self._waiting and (self._active_images + self._waiting[0].n_images <= self.max_batch_images
                                         or not self._active and not admitted):
                    job = self._waiting.popleft()
                    admitted.append(job)
                    self._active_images += job.n_images
                metrics.QUEUE_DEPTH.labels(self.model).set(len(self._waiting))
            for job in admitted:
                self._admit(job)
            self._drop_cancelled()
            if self._active:
                self._step_group()
            metrics.ACTIVE.labels(self.model).set(len(self._active))

    def _admit(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._release(job)
            return
        metrics.QUEUE_SECONDS.labels(self.model).observe(time.perf_counter() - job.created)
        try:
            self.pipeline.check_shape(job)
            self.pipeline.prepare(job)
        except BaseException as error:  # noqa: BLE001  reported to the caller, not raised here
            self._fail(job, error)
            return
        self._active.append(job)

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._active if job.cancelled.is_set()]:
            self._active.remove(job)
            self._release(job)
            metrics.OUTCOMES.labels(self.model, "cancelled").inc()

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
        job.emit(_END)
        self._release(job)

    def _fail(self, job: Job, error: BaseException) -> None:
        if not isinstance(error, FabulaError):
            log.error("generation failed in model %s", self.model, exc_info=error)
        metrics.OUTCOMES.labels(self.model, "error").inc()
        job.emit(error)
        self._release(job)

    def _release(self, job: Job) -> None:
        with self._cond:
            self._active_images -= job.n_images
        # Free the job's tensors now rather than when the caller lets go of it.
        job.latents = job.embeds = job.image_latents = job.noise = job.unet_extra = None
