"""Freed heap memory handed back to the system between a study's phases."""

from __future__ import annotations

import sys

import pytest

from jaxcell import host_memory


def _resident_mb() -> float:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_freed_heap_pages_leave_the_process():
  # 300 MB in 100 kB blocks (below glibc's mmap threshold, so on the heap, one after another); every other one
  # freed leaves 150 MB of holes between blocks still in use, which glibc keeps for reuse.
  blocks = [b"\x01" * 100_000 for _ in range(3000)]  # Written, so resident.
  kept = blocks[1::2]
  del blocks
  before = _resident_mb()
  assert host_memory.release_free_memory()
  after = _resident_mb()
  assert before - after > 100, f"resident {before:.0f} MB -> {after:.0f} MB after release_free_memory"
  assert len(kept) == 1500 and all(block[-1] == 1 for block in kept)  # Still in use, untouched.
