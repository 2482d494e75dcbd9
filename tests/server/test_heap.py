"""Free heap memory goes back to the OS after start-up (glibc's malloc_trim)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: in the test run's own process, earlier tests leave the heap with
# holes of every size, and freeing the garbage below sometimes gave 60 MB back by itself.
_SCRIPT = """
import json
from ltrr_server.heap import release_free_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

# Blocks past CPython's small-object allocator come from malloc's heap. Garbage between blocks
# that stay (as a first start's training leaves it between the catalog's items) is not at the
# heap's top, so freeing it alone gives nothing back.
garbage, kept = [], []
for i in range(8_000):
    garbage.append(b"x" * 20_000 + bytes([i % 256]))
    kept.append(b"k" * 600 + bytes([i % 256]))
high = rss_mb()
del garbage
freed_only = rss_mb()
trimmed_ok = release_free_memory()
print(json.dumps({"high": high, "freed_only": freed_only, "trimmed": rss_mb(), "ok": trimmed_ok,
                  "kept": len(kept)}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_below_a_live_one_are_returned() -> None:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    m = json.loads(out.stdout)
    assert m["ok"] is True and m["kept"] == 8_000
    assert m["high"] - m["freed_only"] < 50, (m, "freeing alone returned it: the test would show nothing")
    assert m["freed_only"] - m["trimmed"] > 100, m
