"""The batch's key/value cache: preallocated buffers for every layer (views of one allocation),
shared by every running sequence.

Layout per layer: keys and values `[max_rows, kv_heads, capacity, head_dim]`. Rows are the running
sequences (row i of the batch is row i of the buffer); columns are cache slots. Every decode step
appends one column for all rows at once, so a step writes in place instead of concatenating (the
O(length) copy a `DynamicCache` pays per step). Each row's valid columns are given by its
attention mask, with explicit position ids, so a row may have holes:

- a sequence that joins with a prompt shorter than the batch's history is right-aligned (the
  columns before it are masked out for that row);
- a sequence that backtracks (a banned string) masks out the columns it takes back.

The valid region is `[start, end)`: leading columns no row uses any more are dropped by moving
`start`, and the region is moved back to 0 (growing the buffer if needed) when it reaches the end.
Removing a finished row moves the last row into its place (one row copied, not the batch).
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _BatchLayer(CacheLayerMixin):
    """One layer's view of the shared buffers, in the shape transformers' attention expects."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: BatchKVCache, index: int) -> None:
        super().__init__()
        # A weak reference: with a strong one, cache and layers form a cycle that only the cycle
        # collector frees, so a dropped cache's buffers (hundreds of MB at long contexts) could
        # linger until it happens to run.
        self.owner, self.index = weakref.proxy(owner), index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.owner.write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.width + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_max_length(self) -> int:
        return -1


class BatchKVCache(Cache):
    """Shared cache of the running batch (see the module docstring)."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, max_rows: int, initial_capacity: int = 256) -> None:
        super().__init__(layers=[_BatchLayer(self, index) for index in range(num_layers)])
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.max_rows = max_rows
        self.capacity = initial_capacity
        self.rows = 0
        self.start = 0
        self.end = 0
        self.num_layers = num_layers
        self.keys_buf, self.values_buf = self._empty(initial_capacity)
        self.mask = torch.zeros(max_rows, initial_capacity, dtype=torch.bool, device=device)

    def _empty(self, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeroed key and value buffers for every layer, as views of one allocation.

        One allocation, not one per layer: per-layer buffers are small enough to come from glibc's
        heap, where caches of changing sizes fragment it and resident memory grows with every
        replaced cache (docs/text.md); the whole cache is far above glibc's mmap threshold (32 MB
        at most), so it gets its own mapping and goes back to the system when freed."""
        storage = torch.zeros(2, self.num_layers, self.max_rows, self.kv_heads, capacity, self.head_dim,
                              dtype=self.dtype, device=self.device)
        return list(storage[0].unbind(0)), list(storage[1].unbind(0))

    @property
    def width(self) -> int:
        """Columns in the valid region (the attention span of the next step, before its own)."""
        return self.end - self.start

    # --- used by the model's forward -------------------------------------------------------

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one decode step's keys/values (column `end`) and return the span to attend to."""
        self.keys_buf[layer][: self.rows, :, self.end] = keys[:, :, 0]
        self.values_buf[layer][: self.rows, :, self.end] = values[:, :, 0]
        span = slice(self.start, self.end + 1)
        return self.keys_buf[layer][: self.rows, :, span], self.values_buf[layer][: self.rows, :, span]

    # --- used by the scheduler -------------------------------------------------------------

    def prepare_step(self) -> torch.Tensor:
        """Make room for one more column, mark it valid for every row, and return the 4D boolean
        attention mask `[rows, 1, 1, width + 1]` of the step."""
        if self.end >= self.capacity:
            self._relocate(self.width + 1)
        self.mask[: self.rows, self.end] = True
        return self.mask[: self.rows, None, None, self.start: self.end + 1]

    def finish_step(self) -> None:
        self.end += 1

    def add_row(self, prefilled: Cache, length: int) -> int:
        """Append a sequence whose prompt was prefilled into its own cache; returns its row."""
        if self.rows >= self.max_rows:
            raise RuntimeError("batch cache is full")
        if self.rows == 0:
            self.start = self.end = 0
        if length > self.width:
            # The new row is longer than the batch's history: move everything right.
            self._relocate(length + 1, left_room=length - self.width)
        row = self.rows
        self.rows += 1
        for layer in range(len(self.layers)):
            source = prefilled.layers[layer]
            self.keys_buf[layer][row, :, self.end - length: self.end] = source.keys[0, :, -length:]
            self.values_buf[layer][row, :, self.end - length: self.end] = source.values[0, :, -length:]
        self.mask[row] = False
        self.mask[row, self.end - length: self.end] = True
        return row

    def remove_row(self, row: int) -> None:
        """Drop a finished row; the last row moves into its place (callers mirror the swap)."""
        last = self.rows - 1
        if row != last:
            for layer in range(len(self.layers)):
                self.keys_buf[layer][row, :, self.start: self.end] = self.keys_buf[layer][last, :, self.start: self.end]
                self.values_buf[layer][row, :, self.start: self.end] = self.values_buf[layer][last, :, self.start: self.end]
            self.mask[row] = self.mask[last]
        self.mask[last] = False
        self.rows = last
        self._drop_unused_columns()

    def mask_out(self, row: int, columns: list[int]) -> None:
        """Take back cache slots of one row (it backtracked); they are never attended again."""
        self.mask[row, columns] = False

    def column_of_last(self) -> int:
        """The column the next step writes (absolute, as `mask_out` expects)."""
        return self.end

    def _drop_unused_columns(self) -> None:
        if self.rows == 0:
            self.start = self.end = 0
            return
        used = self.mask[: self.rows, self.start: self.end].any(dim=0)
        first = int(torch.argmax(used.to(torch.uint8))) if bool(used.any()) else self.width
        self.start += first

    def _relocate(self, needed: int, left_room: int = 0) -> None:
        """Move the valid region to column `left_room` of buffers with room for `needed` columns
        (growing them by doubling), so appending can go on."""
        width = self.width
        capacity = self.capacity
        while capacity < max(needed, width + left_room) + 1:
            capacity *= 2
        if capacity == self.capacity and left_room == 0 and self.start > 0:
            # Same buffers: shift in place (clone first; source and target overlap).
            for buffers in (self.keys_buf, self.values_buf):
                for layer, buf in enumerate(buffers):
                    buf[:, :, :width] = buf[:, :, self.start: self.end].clone()
            self.mask[:, :width] = self.mask[:, self.start: self.end].clone()
            self.mask[:, width:] = False
        else:
            fresh_keys, fresh_values = self._empty(capacity)
            for buffers, fresh in ((self.keys_buf, fresh_keys), (self.values_buf, fresh_values)):
                for layer, buf in enumerate(buffers):
                    fresh[layer][:, :, left_room: left_room + width] = buf[:, :, self.start: self.end]
            self.keys_buf, self.values_buf = fresh_keys, fresh_values
            mask = torch.zeros(self.max_rows, capacity, dtype=torch.bool, device=self.device)
            mask[:, left_room: left_room + width] = self.mask[:, self.start: self.end]
            self.mask = mask
            self.capacity = capacity
        self.start, self.end = 0, left_room + width

    # --- Cache interface bits transformers may ask for ------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.width + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.width
