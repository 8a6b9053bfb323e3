"""The host's process memory helpers (rayagg/runtime/memory.py). No Ray."""
import sys

import pytest

from rayagg.runtime import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc")
def test_freed_heap_in_holes_goes_back_to_the_machine():
    # Blocks below glibc's mmap threshold live in the heap; freeing every other one leaves
    # holes that free() alone keeps (a kept block sits above each), as a batch's
    # activations do between its nodes' state.
    blocks = [bytearray(64 * 1024) for _ in range(2000)]
    del blocks[::2]
    held = memory.rss_mb()
    memory.return_free_memory()
    assert held - memory.rss_mb() > 30, (held, memory.rss_mb())
