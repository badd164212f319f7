"""Large buffers get their own mappings, so freeing them gives the memory back (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Frees a 30 MB block first (glibc's default then raises its mmap threshold to 30 MB), then
# allocates 40 buffers of 8 MB with 64 KB blocks between them (so the heap cannot simply be
# trimmed; blocks that large come from the heap's top, not from free lists left by imports), frees
# the buffers and prints how many MB stayed resident.
SCRIPT = """
import os, sys
sys.path.insert(0, os.getcwd())
import torch
from services.toolkit.memory import map_large_buffers_separately
def resident():
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * 4096
if sys.argv[1] == "fixed":
    assert map_large_buffers_separately()
first = torch.ones(30 << 18)
del first
base = resident()
held, pins = [], []
for _ in range(40):
    held.append(torch.ones(2 << 20))
    pins.append(torch.ones(16 << 10))
del held
print((resident() - base) >> 20)
"""


def megabytes_kept(script: Path, mode: str) -> int:
    out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3])
    return int(out.stdout.strip())


def test_freed_large_buffers_are_returned_to_the_system(tmp_path):
    script = tmp_path / "allocate.py"
    script.write_text(SCRIPT)
    assert megabytes_kept(script, "fixed") < 16
    # The same program with glibc's default threshold keeps most of the 320 MB.
    assert megabytes_kept(script, "default") > 160
