"""Freezing the start-up heap: garbage left by start-up is collected first, the objects alive then
leave the collector's walk, and garbage made afterwards is still collected. Each case runs in a
process of its own: what is frozen stays frozen for the life of the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run_isolated(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_alive_objects_leave_the_walk_and_later_garbage_is_still_collected():
    out = run_isolated("""
        import gc, weakref
        from services.toolkit.heap import freeze_startup_heap

        class Node:
            pass

        def cycle():
            node = Node()
            node.itself = node
            return node

        kept = cycle()                    # alive at start-up: frozen
        left_behind = weakref.ref(cycle())  # start-up garbage: collected before the freeze
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0, frozen
        assert left_behind() is None, "start-up garbage was frozen instead of collected"
        assert not any(obj is kept for obj in gc.get_objects()), "a frozen object is still walked"
        later = weakref.ref(cycle())      # garbage made while serving
        gc.collect()
        assert later() is None, "garbage made after the freeze was not collected"
        assert kept.itself is kept
        print("ok", frozen)
    """)
    assert out.startswith("ok ")
    assert int(out.split()[1]) > 1000  # the interpreter's own start-up objects, at least
