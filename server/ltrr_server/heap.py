"""Giving freed heap memory back to the operating system.

A first start trains the demo autocomplete model and ingests the demo catalog, and what they
leave is garbage once the server is up. CPython frees it, but glibc keeps the free pages that lie
between live blocks, where they count as the server's RSS for as long as it runs. ``malloc_trim``
returns them (the demo's first start: 529 -> 481 MB; a restart: 383 -> 358 MB). Elsewhere than
glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any


def libc_function(name: str) -> Any:
    """A function of the C library by name, or None where there is no such library or function.

    >>> libc_function("no_such_function") is None
    True
    """
    library = ctypes.util.find_library("c")
    if not library:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Collects garbage and returns free heap pages to the OS. True if the C library could.

    >>> isinstance(release_free_memory(), bool)
    True
    """
    gc.collect()
    trim = libc_function("malloc_trim")
    if trim is None:  # not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
