"""Giving freed heap memory back to the operating system.

A first start trains the demo autocomplete model and ingests the demo catalog: several hundred
MB that are garbage once the server is up. CPython frees them, but glibc keeps most of it in its
arenas, where it would count as the server's RSS for as long as it runs. ``malloc_trim`` returns
the free pages. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Collects garbage and returns free heap pages to the OS. True if the C library could.

    >>> isinstance(release_free_memory(), bool)
    True
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
