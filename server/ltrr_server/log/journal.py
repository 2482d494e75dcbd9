"""Rows nobody waits for, on disk before their caller is answered.

A decision is answered before its row is committed: the group commit that holds it runs up to
``server.write_idle_linger_seconds`` later (50 ms by default), so a server killed in between
(SIGKILL, the OOM killer, a crash of the interpreter) lost decisions it had answered, and their
rewards then arrived for events the log had never seen. The writer now appends every such row
here first, one ``write`` into the page cache (about 3 us a decision), which a process's death
does not undo; the next start commits what a dead server left (insert-or-ignore, so rows that
did reach the database are not doubled) before it serves. A machine that loses power loses the
page cache too: this journal guards against the death of the process, not of the machine.

Segments: the journal writes one file at a time and starts a new one (``rotate``) once the rows
of the current one are all in a batch the writer is about to commit; the writer deletes the old
file after that commit. Every live writer holds an exclusive ``flock`` on its own file, so a start
never takes the file of another server sharing the folder.

Frames: ``<length u32><crc32 u32><marshal of (table, rows)>``. A frame cut short by the kill or
damaged on disk ends the reading of its file (counted and logged): nothing after it was answered
from a later frame of the same file that the kill could have spared.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> j = Journal(folder)
>>> j.open()
>>> j.write("decisions", [("e1", "p"), ("e2", "p")])
>>> [list(read_segment(p)) for p in leftovers(folder)]  # a live writer's file is not a leftover
[]
>>> j.close(delete=False)
>>> [list(read_segment(p)) for p in leftovers(folder)]
[[('decisions', [('e1', 'p'), ('e2', 'p')])]]
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SUFFIX = ".journal"
# marshal's format version: the one every supported Python reads and writes.
_MARSHAL_VERSION = 4


class Journal:
    """The current segment of one writer; not thread-safe (the writer calls it under its lock)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd = -1
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._new_segment()

    def _new_segment(self) -> None:
        # Named by time, then a random part: sorted names are the order segments were written in.
        path = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd, self._path, self._opened_at, self._bytes = fd, path, time.monotonic(), 0

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def path(self) -> Path | None:
        """The segment being written."""
        return self._path

    def write(self, table: str, rows: Sequence[Any]) -> None:
        """Appends rows (tuples of plain values) to the current segment."""
        payload = marshal.dumps((table, [tuple(r) for r in rows]), _MARSHAL_VERSION)
        os.write(self._fd, _HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self._bytes += len(payload) + _HEADER.size

    def due(self, seconds: float, max_bytes: int) -> bool:
        """Whether the current segment is old or large enough to be replaced."""
        return self._bytes > 0 and (self._bytes >= max_bytes or time.monotonic() - self._opened_at >= seconds)

    def rotate(self) -> Path:
        """Starts a new segment and returns the previous one, to delete once its rows are committed."""
        old_fd, old = self._fd, self._path
        self._new_segment()
        os.close(old_fd)  # closing drops its lock; the writer deletes it after the commit
        assert old is not None
        return old

    def close(self, *, delete: bool) -> None:
        """Closes the current segment; deletes it when everything written to it is committed."""
        if self._fd < 0:
            return
        path = self._path
        os.close(self._fd)
        self._fd = -1
        if delete and path is not None:
            path.unlink(missing_ok=True)
            try:
                self.folder.rmdir()  # gone when nothing is left for a next start
            except OSError:
                pass


def leftovers(folder: Path) -> list[Path]:
    """Segments of writers that are gone, oldest first (a live writer's own file is locked)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob(f"*{_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # deleted meanwhile by its writer
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer's
        finally:
            os.close(fd)
        found.append(path)
    return found


class DamagedFrame(Exception):
    """A frame cut short or damaged: reading its segment stops there."""


def read_segment(path: Path) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """The (table, rows) frames of a segment, in the order they were written.

    Raises DamagedFrame at a frame cut short or damaged, after yielding the frames before it.
    """
    data = path.read_bytes()
    at = 0
    while at < len(data):
        if at + _HEADER.size > len(data):
            raise DamagedFrame(f"{path.name}: a header cut short at byte {at}")
        length, crc = _HEADER.unpack_from(data, at)
        payload = data[at + _HEADER.size: at + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            raise DamagedFrame(f"{path.name}: a frame cut short or damaged at byte {at}")
        table, rows = marshal.loads(payload)
        yield table, rows
        at += _HEADER.size + length
