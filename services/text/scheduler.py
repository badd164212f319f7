"""Continuous batching: one thread per model runs the decode loop; requests join and leave between
steps.

Each loop iteration:
1. drops cancelled sequences (a client that went away frees its slot within one step);
2. admits waiting requests while the batch has room and processes one chunk of one new prompt
   (long prompts are processed in chunks so the running batch is never stalled for long);
3. runs one decode step for every running sequence at once: one forward pass over the batch
   (`decode_step.py`), each row with its own position and attention mask (`BatchKVCache`), then
   each sequence draws its next token with its own sampling parameters and its own seeded
   generator.

The asyncio side talks to the thread through a bounded queue (full → RESOURCE_EXHAUSTED at once)
and gets `Piece`s and a final `Stats` back through `loop.call_soon_threadsafe`, once per loop
iteration for all of them (`Engine._flush`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from services.text import metrics
from services.text.decode_step import decode_step_for
from services.text.kv_cache import BatchKVCache
from services.text.models import LoadedModel
from services.text.sequence import FinishReason, GenerationRequest, Piece, Sequence, Stats
from services.toolkit.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 16
    max_queue: int = 64
    prefill_chunk_tokens: int = 512


class _Prefill:
    """A prompt being processed chunk by chunk into its own cache before it joins the batch."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.cache = DynamicCache()
        self.done = 0


class GenerationHandle:
    """The asyncio side of one request: iterate it for pieces, then `stats`; `cancel()` stops it."""

    def __init__(self, seq: Sequence, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.seq = seq
        self._engine = engine
        self._loop = loop
        self._events: asyncio.Queue[Piece | Stats | Exception] = asyncio.Queue()
        self.stats: Stats | None = None

    def cancel(self) -> None:
        self.seq.cancelled = True
        self._engine.wake()

    async def __aiter__(self) -> AsyncIterator[Piece]:
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, Stats):
                    self.stats = event
                    return
                if isinstance(event, Exception):
                    self.stats = None
                    raise event
                yield event
        finally:
            if self.stats is None:
                self.cancel()


class Engine:
    def __init__(self, model: LoadedModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self._waiting: collections.deque[tuple[Sequence, GenerationHandle]] = collections.deque()
        self._handles: dict[int, GenerationHandle] = {}
        self._prefilling: collections.deque[_Prefill] = collections.deque()
        self._running: list[Sequence] = []  # index i is row i of the cache
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[GenerationHandle, Piece | Stats | Exception]] = []  # see _flush
        self._cache = BatchKVCache(
            num_layers=model.num_layers, kv_heads=model.kv_heads, head_dim=model.head_dim,
            dtype=model.dtype, device=model.device, max_rows=config.max_batch_size)
        self._step = decode_step_for(model.model, self._cache)
        self.steps = 0  # decode steps run (tests and metrics read it)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.model.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    # --- the asyncio side ------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a request; RESOURCE_EXHAUSTED at once when the queue is full."""
        seq = Sequence(request, self.model)
        handle = GenerationHandle(seq, self, asyncio.get_running_loop())
        with self._wakeup:
            if self._stopping:
                raise Unavailable("the text service is shutting down")
            # Room is the free batch slots plus the queue; a request that can start at once is
            # never refused, even with max_queue 0.
            in_flight = len(self._waiting) + len(self._running) + len(self._prefilling)
            if in_flight >= self.config.max_batch_size + self.config.max_queue:
                metrics.REJECTED.labels(self.model.name).inc()
                raise ResourceExhausted(
                    f"generation queue is full ({self.config.max_queue} waiting); retry shortly",
                    retry_after_s=1.0, reason="QUEUE_FULL")
            self._waiting.append((seq, handle))
            self._handles[id(seq)] = handle
            metrics.QUEUE_DEPTH.labels(self.model.name).set(len(self._waiting))
            self._wakeup.notify()
        return handle

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefilling)

    # --- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wakeup:
                while not self._stopping and not (self._waiting or self._prefilling or self._running):
                    self._wakeup.wait()
                if self._stopping:
                    break
                self._admit_locked()
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    if self._prefilling:
                        self._prefill_chunk(self._prefilling[0])
                    if self._running:
                        self._decode_step()
            except Exception as error:
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(RuntimeError(f"generation failed: {type(error).__name__}"))
            self._flush()
        self._fail_all(Unavailable("the text service is shutting down"))
        self._flush()

    def _admit_locked(self) -> None:
        while self._waiting and len(self._running) + len(self._prefilling) < self.config.max_batch_size:
            seq, _ = self._waiting.popleft()
            seq.started = time.perf_counter()
            metrics.QUEUE_SECONDS.labels(self.model.name).observe(seq.started - seq.request.arrived)
            self._prefilling.append(_Prefill(seq))
        metrics.QUEUE_DEPTH.labels(self.model.name).set(len(self._waiting))

    def _drop_cancelled(self) -> None:
        now = time.perf_counter()
        for prefill in [p for p in self._prefilling if p.seq.cancelled]:
            self._prefilling.remove(prefill)
            prefill.seq.cancel(now)
            self._finish(prefill.seq)
        for row in reversed(range(len(self._running))):
            seq = self._running[row]
            if seq.cancelled:
                seq.cancel(now)
                self._remove_row(row)
                self._finish(seq)
        with self._lock:
            for seq, handle in [item for item in self._waiting if item[0].cancelled]:
                self._waiting.remove((seq, handle))
                seq.cancel(now)
                self._finish(seq)

    def _prefill_chunk(self, prefill: _Prefill) -> None:
        seq = prefill.seq
        prompt = seq.prompt_ids
        end = min(prefill.done + self.config.prefill_chunk_tokens, len(prompt))
        ids = torch.tensor([prompt[prefill.done: end]], dtype=torch.long, device=self.model.device)
        out = self.model.model(input_ids=ids, past_key_values=prefill.cache, use_cache=True, logits_to_keep=1)
        prefill.done = end
        if end < len(prompt):
            return
        self._prefilling.popleft()
        token = seq.next_token(out.logits[0, -1].to("cpu"))
        now = time.perf_counter()
        seq.accept(token, now)
        metrics.TIME_TO_FIRST_TOKEN.labels(self.model.name).observe(now - seq.request.arrived)
        if seq.finish is not None:
            self._finish(seq)
            return
        # Join the batch before the first piece goes out, so a client that reacts to it finds the
        # sequence running.
        self._cache.add_row(prefill.cache, len(prompt))
        seq.fed = len(prompt)
        self._running.append(seq)
        self._publish(seq)

    def _decode_step(self) -> None:
        rows = self._running
        device = self.model.device
        tokens = torch.tensor([seq.pending_token for seq in rows], dtype=torch.long, device=device)
        positions = torch.tensor([seq.fed for seq in rows], dtype=torch.long, device=device)
        mask = self._cache.prepare_step()
        logits = self._step(tokens, positions, mask)
        self._cache.finish_step()
        logits = logits.float().to("cpu")
        self.steps += 1
        metrics.BATCH_SIZE.labels(self.model.name).observe(len(rows))
        now = time.perf_counter()
        finished_rows = []
        for row, seq in enumerate(rows):
            seq.fed += 1
            forget = seq.accept(seq.next_token(logits[row]), now)
            if forget:
                self._forget(row, forget)
                seq.fed -= forget
            self._publish(seq)
            if seq.finish is not None:
                finished_rows.append(row)
        metrics.GENERATED_TOKENS.labels(self.model.name).inc(len(rows))
        for row in reversed(finished_rows):
            seq = self._running[row]
            self._remove_row(row)
            self._finish(seq)

    def _forget(self, row: int, count: int) -> None:
        """Mask out the row's last `count` cache slots (it backtracked)."""
        valid = torch.nonzero(self._cache.mask[row, self._cache.start: self._cache.end]).flatten()
        columns = (valid[-count:] + self._cache.start).tolist()
        self._cache.mask_out(row, columns)

    def _remove_row(self, row: int) -> None:
        self._cache.remove_row(row)
        last = self._running.pop()
        if row < len(self._running):
            self._running[row] = last

    # --- results -----------------------------------------------------------------------------

    def _publish(self, seq: Sequence) -> None:
        piece = seq.take_piece()
        if piece is not None:
            self._outbox.append((self._handles[id(seq)], piece))

    def _finish(self, seq: Sequence) -> None:
        self._publish(seq)
        handle = self._handles.pop(id(seq), None)
        stats = seq.stats()
        metrics.record_finish(self.model.name, stats)
        if handle is not None:
            self._outbox.append((handle, stats))

    def _flush(self) -> None:
        """Hand this iteration's pieces and results to the asyncio side, one wake-up per event loop.

        Not one `call_soon_threadsafe` per piece: each wakes the event loop's thread in the middle
        of the step's sampling, where it waits for the GIL the engine thread holds, and the engine
        then for it. Handed over together, they are delivered while the next step runs its forward
        pass, which releases the GIL."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationHandle, Piece | Stats | Exception]]] = {}
        for handle, event in self._outbox:
            by_loop.setdefault(handle._loop, []).append((handle, event))
        self._outbox = []
        for loop, events in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:  # that loop is closed: nobody is left to read its events
                log.debug("dropped %d events for a closed event loop", len(events))

    @torch.inference_mode()
    def _fail_all(self, error: Exception) -> None:
        """After an unexpected failure (a bug, out of memory) or on shutdown: fail every request in
        flight with `error` and start over with an empty batch, so one bad step cannot wedge the
        service."""
        now = time.perf_counter()
        with self._lock:
            waiting = [seq for seq, _ in self._waiting]
            self._waiting.clear()
        for seq in [p.seq for p in self._prefilling] + list(self._running) + waiting:
            seq.cancel(now)
            handle = self._handles.pop(id(seq), None)
            if handle is not None:
                self._outbox.append((handle, error))
        self._prefilling.clear()
        while self._running:
            self._remove_row(len(self._running) - 1)


def _deliver(events: list[tuple[GenerationHandle, Piece | Stats | Exception]]) -> None:
    """On the event loop: queue each event for its handle's reader."""
    for handle, event in events:
        handle._events.put_nowait(event)
