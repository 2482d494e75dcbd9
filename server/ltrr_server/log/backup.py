"""A consistent copy of the database while the server runs.

SQLite: its online backup, page by page, into a new file that is renamed into place only when
complete; the server keeps writing meanwhile (a write during a step makes SQLite restart the
copy from there, so the copy is of one moment). PostgreSQL: ``pg_dump``, which is the tool for
it; ``backup`` names the command instead of reimplementing it.

>>> import tempfile, sqlite3, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with sqlite3.connect(d / "a.db") as c:
...     _ = c.execute("create table t (x)"); _ = c.execute("insert into t values (42)")
>>> backup(f"sqlite:///{d / 'a.db'}", d / "copy.db").pages > 0
True
>>> sqlite3.connect(d / "copy.db").execute("select x from t").fetchall()
[(42,)]
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ltrr_server.errors import FailedPrecondition, InvalidArgument

# Pages a step copies (4 KiB each: 4 MiB); between steps the server's writes go on.
STEP_PAGES = 1024


@dataclass(frozen=True)
class Backup:
    path: Path
    pages: int
    bytes: int


def pg_dump_command(url: str, out: Path | str) -> str:
    """The documented PostgreSQL route: a custom-format dump, restored with ``pg_restore``."""
    return f"pg_dump --format=custom --file {out} '{url}'   # restore: pg_restore --clean --dbname URL {out}"


def backup(url: str, out: Path | str, progress: Callable[[int, int], None] | None = None) -> Backup:
    """Copies the SQLite database at ``url`` to ``out`` (which must not exist); ``progress`` gets
    (pages copied, pages in all) after each step."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        raise FailedPrecondition(f"ltrr backs up SQLite itself; for {parsed.get_backend_name()} use its own tool: "
                                 f"{pg_dump_command(parsed.render_as_string(hide_password=True), out)}", field="db")
    out = Path(out)
    if out.exists():
        raise InvalidArgument("out", f"{out} exists; a backup never overwrites a file")
    if not out.parent.is_dir():
        raise InvalidArgument("out", f"no directory {str(out.parent)!r} to write {out.name} in")
    source = parsed.database
    if not source or source == ":memory:":
        raise InvalidArgument("db", "an in-memory database has nothing to back up")
    if not os.path.exists(source):
        raise InvalidArgument("db", f"no database file at {source}")
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    copied = 0

    def step(_status: int, remaining: int, total: int) -> None:
        nonlocal copied
        copied = total - remaining
        if progress is not None:
            progress(copied, total)

    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(partial)
    try:
        src.backup(dst, pages=STEP_PAGES, progress=step)
    finally:
        dst.close()
        src.close()
    partial.rename(out)
    return Backup(out, copied, out.stat().st_size)
