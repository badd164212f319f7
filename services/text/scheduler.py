"""Continuous batching: the scheduler runs each model's decode loop on that model's worker
thread (`services/toolkit/worker.py`); requests join and leave between steps.

Each loop iteration:
1. takes the waiting requests the batch has room for (the worker hands them over);
2. drops cancelled sequences (a client that went away frees its slot within one step) and
   processes one chunk of one new prompt (long prompts are processed in chunks so the running
   batch is never stalled for long). A prompt starts from the longest beginning of it whose keys
   and values are in the prefix cache (`prefix_cache.py`), and leaves its own blocks there;
3. runs one decode step for every running sequence at once: one forward pass over the batch
   (`decode_step.py`), each row with its own position and attention mask (`BatchKVCache`), then
   each sequence draws its next token with its own sampling parameters and its own seeded
   generator. A sequence with classifier-free guidance holds a second row (`GuidanceRow`) fed
   its negative context and then its own output, so the unconditional logits come from the same
   batched forward pass; it counts twice against the batch size.

The worker owns the bounded queue (full → RESOURCE_EXHAUSTED at once), cancellation and the
hand-over of `Piece`s and the final `Stats` to the event loop, once per iteration for all of them.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from services.text import metrics
from services.text.decode_step import decode_step_for
from services.text.kv_cache import BatchKVCache
from services.text.models import LoadedModel
from services.text.prefix_cache import PrefixCache
from services.text.sequence import GenerationRequest, GuidanceRow, Piece, Sequence, Stats
from services.toolkit.worker import Handle, QueueMetrics, Reservation, Worker

GenerationHandle = Handle[Sequence, Piece, Stats]


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 16
    max_queue: int = 64
    max_per_user: int | None = None  # None: no cap (in-process tests and benchmarks)
    prefill_chunk_tokens: int = 512
    prefix_cache_bytes: int = 512 * 2**20  # 0 turns prefix reuse off
    prefix_block_tokens: int = 32


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's operators on the calling thread alone while the block runs.

    Sampling works on one 49k-float row at a time: big enough for torch to split each elementwise
    operator and reduction over its intra-op (OpenMP) threads, far too small to gain from it. Each
    such operator then waits at a barrier for the second thread, which on a busy machine is not
    always running (the event loop, the gRPC threads and the client share the cores): in a
    scheduler with the model step replaced by real logit rows, 8 rows of `balanced` sampling took
    5.1 ms a step with two threads and 3.5 ms with one (docs/text.md). The decode step keeps all
    its threads: the count is restored before it.

    It also makes sampling independent of the deployment's thread count: a float reduction over a
    whole row (unified sampling's entropy) splits its sum by thread, so its last bits, and now and
    then a seeded token, depended on `FABULA_TEXT_THREADS`."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Prefill:
    """A prompt being processed chunk by chunk into its own cache before it joins the batch."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.cache: DynamicCache | None = None  # set by the prefix-cache lookup on the first chunk
        self.done = 0


class Scheduler:
    """One model's continuous-batching decode loop, run by a `Worker`."""

    def __init__(self, model: LoadedModel, config: SchedulerConfig) -> None:
        self.model = model
        self.config = config
        self._prefilling: collections.deque[_Prefill] = collections.deque()
        self._running: list[Sequence | GuidanceRow] = []  # index i is row i of the cache
        self._cache = BatchKVCache(
            num_layers=model.num_layers, kv_heads=model.kv_heads, head_dim=model.head_dim,
            dtype=model.dtype, device=model.device,
            # A guided sequence takes two rows, and runs alone when it outweighs the whole batch.
            max_rows=max(config.max_batch_size, 2))
        self._step = decode_step_for(model.model, self._cache)
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes, config.prefix_block_tokens)
        self.steps = 0  # decode steps run (tests and metrics read it)
        self._worker: Worker[Sequence, Piece, Stats] = Worker(
            self, service="text", model=model.name, capacity=config.max_batch_size, max_queue=config.max_queue,
            max_per_owner=config.max_per_user, metrics=QueueMetrics(metrics.QUEUE_DEPTH.labels(model.name), metrics.REJECTED.labels(model.name)))

    # --- the asyncio side ------------------------------------------------------------------

    def submit(self, request: GenerationRequest, owner: str = "") -> GenerationHandle:
        """Queue `owner`'s request; RESOURCE_EXHAUSTED at once when the queue is full or the
        owner is at its cap."""
        return self._worker.submit(Sequence(request, self.model), owner)

    def reserve(self, owner: str = "") -> Reservation[Sequence, Piece, Stats]:
        """Hold a place for `owner`'s request while its prompt is built (the checks of `submit`)."""
        return self._worker.reserve(owner)

    def submit_reserved(self, place: Reservation[Sequence, Piece, Stats], request: GenerationRequest
                        ) -> GenerationHandle:
        return place.submit(Sequence(request, self.model))

    def stop(self) -> None:
        self._worker.stop()

    @property
    def queue_depth(self) -> int:
        return self._worker.queue_depth

    @property
    def active(self) -> int:
        """Sequences in the batch: processing their prompt or decoding."""
        return self._worker.active

    # --- the domain loop, on the worker thread ----------------------------------------------

    def weight(self, seq: Sequence) -> int:
        return 2 if seq.params.sampling.uses_guidance else 1

    def admit(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            seq.started = time.perf_counter()
            metrics.QUEUE_SECONDS.labels(self.model.name).observe(seq.started - seq.request.arrived)
            self._prefilling.append(_Prefill(seq))

    @torch.inference_mode()
    def iterate(self) -> None:
        self._drop_cancelled()
        if self._prefilling:
            self._prefill_chunk(self._prefilling[0])
        if self._running:
            self._decode_step()

    def mark_cancelled(self, seq: Sequence) -> None:
        seq.cancelled = True

    def withdraw(self, seq: Sequence) -> None:
        seq.cancel(time.perf_counter())
        self._finish(seq)

    @torch.inference_mode()
    def reset(self) -> None:
        now = time.perf_counter()
        for seq in [p.seq for p in self._prefilling] + self._sequences():
            seq.cancel(now)
        self._prefilling.clear()
        while self._running:
            self._remove_row(len(self._running) - 1)

    def retry_after_s(self) -> float:
        return 1.0

    def _drop_cancelled(self) -> None:
        now = time.perf_counter()
        for prefill in [p for p in self._prefilling if p.seq.cancelled]:
            self._prefilling.remove(prefill)
            prefill.seq.cancel(now)
            self._finish(prefill.seq)
        for seq in [seq for seq in self._sequences() if seq.cancelled]:
            seq.cancel(now)
            self._remove_sequence(seq)
            self._finish(seq)

    def _prefill_chunk(self, prefill: _Prefill) -> None:
        seq = prefill.seq
        prompt = seq.prompt_ids
        if prefill.cache is None:
            self._start_from_prefix(prefill)
        # Chunks end at multiples of the chunk size whatever the cached part was, so a prompt's
        # keys and values are computed over the same spans with and without reuse.
        chunk = self.config.prefill_chunk_tokens
        end = min((prefill.done // chunk + 1) * chunk, len(prompt))
        ids = torch.tensor([prompt[prefill.done: end]], dtype=torch.long, device=self.model.device)
        out = self.model.model(input_ids=ids, past_key_values=prefill.cache, use_cache=True, logits_to_keep=1)
        prefill.done = end
        if end < len(prompt):
            return
        self._prefilling.popleft()
        self.prefix_cache.store(prompt, prefill.cache)
        self._record_prefix_cache()
        guide_cache, uncond = None, None
        if seq.params.sampling.uses_guidance:
            guide_cache, uncond = self._prefill_guidance(seq)
        with one_thread():
            token = seq.next_token(out.logits[0, -1].to("cpu"), uncond)
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
        if guide_cache is not None:
            guide = GuidanceRow(seq)
            self._cache.add_row(guide_cache, len(guide.prompt_ids))
            guide.fed, guide.pending_token = len(guide.prompt_ids), seq.pending_token
            seq.guide = guide
            self._running.append(guide)
        self._publish(seq)

    def _prefill_guidance(self, seq: Sequence) -> tuple[DynamicCache, torch.Tensor]:
        """The negative context's cache and its last logits, processed in chunks at once (it is
        usually short; a long one stalls the batch as a long prompt's single chunk would)."""
        cache = DynamicCache()
        ids = seq.request.uncond_ids
        chunk = self.config.prefill_chunk_tokens
        out = None
        for start in range(0, len(ids), chunk):
            part = torch.tensor([ids[start: start + chunk]], dtype=torch.long, device=self.model.device)
            out = self.model.model(input_ids=part, past_key_values=cache, use_cache=True, logits_to_keep=1)
        assert out is not None, "the negative context has at least one token (the generator sees to it)"
        return cache, out.logits[0, -1].to("cpu")

    def _start_from_prefix(self, prefill: _Prefill) -> None:
        match = self.prefix_cache.lookup(prefill.seq.prompt_ids)
        prefill.cache, prefill.done = match.cache, match.tokens
        prefill.seq.cached_prompt_tokens = match.tokens
        metrics.PROMPT_TOKENS.labels(self.model.name).inc(len(prefill.seq.prompt_ids))
        metrics.PREFIX_CACHED_TOKENS.labels(self.model.name).inc(match.tokens)

    def _record_prefix_cache(self) -> None:
        metrics.PREFIX_CACHE_BYTES.labels(self.model.name).set(self.prefix_cache.bytes)
        metrics.PREFIX_CACHE_BLOCKS.labels(self.model.name).set(self.prefix_cache.blocks)

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
        row_of = {id(entry): row for row, entry in enumerate(rows)}
        for entry in rows:
            entry.fed += 1
        finished = []
        with one_thread():
            for row, seq in enumerate(rows):
                if isinstance(seq, GuidanceRow):
                    continue
                guide = seq.guide
                uncond = logits[row_of[id(guide)]] if guide is not None else None
                forget = seq.accept(seq.next_token(logits[row], uncond), now)
                if forget:
                    self._forget(row, forget)
                    seq.fed -= forget
                    if guide is not None:
                        self._forget(row_of[id(guide)], forget)
                        guide.fed -= forget
                if guide is not None:
                    guide.pending_token = seq.pending_token
                self._publish(seq)
                if seq.finish is not None:
                    finished.append(seq)
        metrics.GENERATED_TOKENS.labels(self.model.name).inc(len(rows) - sum(isinstance(r, GuidanceRow) for r in rows))
        for seq in finished:
            self._remove_sequence(seq)
            self._finish(seq)

    def _forget(self, row: int, count: int) -> None:
        """Mask out the row's last `count` cache slots (it backtracked)."""
        valid = torch.nonzero(self._cache.mask[row, self._cache.start: self._cache.end]).flatten()
        columns = (valid[-count:] + self._cache.start).tolist()
        self._cache.mask_out(row, columns)

    def _sequences(self) -> list[Sequence]:
        return [entry for entry in self._running if isinstance(entry, Sequence)]

    def _remove_sequence(self, seq: Sequence) -> None:
        """Take a sequence's row, and its guidance row, out of the batch (highest row first: a
        removal moves the last row into the freed one)."""
        rows = [row for row, entry in enumerate(self._running) if entry is seq or entry is seq.guide]
        for row in sorted(rows, reverse=True):
            self._remove_row(row)

    def _remove_row(self, row: int) -> None:
        self._cache.remove_row(row)
        last = self._running.pop()
        if row < len(self._running):
            self._running[row] = last

    # --- results -----------------------------------------------------------------------------

    def _publish(self, seq: Sequence) -> None:
        piece = seq.take_piece()
        if piece is not None:
            self._worker.emit(seq, piece)

    def _finish(self, seq: Sequence) -> None:
        self._publish(seq)
        stats = seq.stats()
        metrics.record_finish(self.model.name, stats)
        self._worker.finish(seq, stats)
