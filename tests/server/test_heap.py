"""Free heap memory goes back to the OS after start-up (glibc's malloc_trim)."""

from __future__ import annotations

import platform

import pytest

from ltrr_server.heap import release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_below_a_live_one_are_returned() -> None:
    # Blocks past CPython's small-object allocator come from malloc's heap. Garbage between
    # blocks that stay (as a first start's training leaves it between the catalog's items) is
    # not at the heap's top, so freeing it alone gives nothing back.
    garbage, kept = [], []
    for i in range(8_000):
        garbage.append(b"x" * 20_000 + bytes([i % 256]))
        kept.append(b"k" * 600 + bytes([i % 256]))
    high = _rss_mb()
    del garbage
    freed_only = _rss_mb()
    assert release_free_memory() is True
    trimmed = _rss_mb()
    assert high - freed_only < 50, (high, freed_only, "freeing alone returned it: the test would show nothing")
    assert freed_only - trimmed > 100, (high, freed_only, trimmed)
    assert len(kept) == 8_000
