"""Keeping the garbage collector's full collections short in long-running processes.

A service process holds hundreds of thousands of objects it made while starting (torch,
transformers and diffusers modules, the loaded models' Python objects, FastAPI's routes) and keeps
them all for its whole life. CPython's full (generation 2) collection walks every tracked object,
so each full collection while serving stopped the process's threads for 20 to 90 ms on a 2-core
host (the text service 92 ms, the gateway 31 ms, measured with `gc.callbacks` under the
resilience load): every call in flight at that moment waited that long. `gc.freeze()` moves the objects alive once
start-up is done into a permanent generation the collector no longer walks; objects made later are
collected as before, and the frozen ones are still freed by reference counting. The price: a frozen
object that later becomes part of an unreachable cycle is never freed, which bounds the loss by
what start-up built (once), not by how long the process serves.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the rest; returns how many objects were
    frozen. Call once, when the process is about to serve and not before: what is frozen is not
    collected again."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen: %d objects out of the collector's way", frozen)
    return frozen
