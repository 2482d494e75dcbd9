"""The event log's inserts at the driver level (DB-API), with no SQLAlchemy in sight.

The writer process (``commit_process``) runs on this module alone: it imports its driver and
nothing else, so it starts in about 0.1 s on SQLite (0.4 s with psycopg) instead of the 0.9 s
that importing SQLAlchemy took (measured on a 2-core machine). Every server start waits for it,
and so does the commit after a writer process died. The server builds the statements and the
connection's arguments with SQLAlchemy's dialect and hands them over as a ``WriterSetup``.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple, Protocol

from ltrr_server.log.rows import ROW_TYPES, decision_row

# A row: one of the named tuples of ``rows``, fields in column order.
Row = tuple[Any, ...]
# Rows of one group commit by table.
Batch = dict[str, list[Row]]
# Tables whose rows may legitimately repeat (idempotent retries): insert-or-ignore.
IGNORE_CONFLICTS = frozenset({"action_sets", "decisions", "pages", "rewards", "joined"})
# The order a batch's tables are written in: a reward is never in before the decision it rewards.
TABLE_ORDER = ("action_sets", "decisions", "pages", "rewards", "joined", "snapshots")
# Tables queued as records that become their rows only here, at the commit (off the event loop).
ENCODERS: dict[str, Callable[[Sequence[Any]], Row]] = {"decisions": decision_row}
# Rows in one INSERT statement (fewer where the database bounds the parameters of a statement).
MAX_ROWS_PER_STATEMENT = 256


class Answer(NamedTuple):
    """The writer process's answer: to a batch, "ok", "retry" (the database is away) or "refused"
    (the batch itself is wrong); before the first batch, "ready" or "failed"."""

    kind: str
    message: str = ""


OK = Answer("ok")


class Cursor(Protocol):
    """The two verbs of a DB-API cursor that the inserts use."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any: ...


class Dialect(Protocol):
    """What an insert needs to know of SQLAlchemy's dialect (read once, in the server)."""

    name: str
    paramstyle: str

    @property
    def identifier_preparer(self) -> Any: ...


class InsertStatement:
    """One table's insert as driver SQL with positional parameters.

    The hot path of the log. SQLAlchemy's per-row parameter processing costs more than the
    database does, so rows go to the driver as tuples. On SQLite many rows go in one
    ``INSERT ... VALUES (...), (...)``: its driver lets go of the GIL around every statement it
    steps, so a row-at-a-time executemany must win the GIL back once per row from a busy event
    loop (measured: beside a busy thread it fell to a few hundred rows a second), while a
    statement of 256 rows wins it back once. Those statements are cut in power-of-two row counts,
    so each table has at most nine SQL texts for the driver to cache. PostgreSQL keeps
    executemany: psycopg pipelines it, and the long statements measured half as fast there.
    Tables whose rows may legitimately repeat (idempotent retries) get ON CONFLICT DO NOTHING,
    which SQLite and PostgreSQL both understand.

    Plain data once built: it is pickled to the writer process.
    """

    def __init__(self, dialect: Dialect, name: str, max_rows: int = MAX_ROWS_PER_STATEMENT) -> None:
        self.columns = list(ROW_TYPES[name]._fields)  # type: ignore[attr-defined]
        quote = dialect.identifier_preparer.quote
        cols = ", ".join(quote(c) for c in self.columns)
        self._head = f"INSERT INTO {name} ({cols}) VALUES "
        self._tail = " ON CONFLICT DO NOTHING" if name in IGNORE_CONFLICTS else ""
        self._mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle, "")
        # Named styles (no dialect we ship): one row per execution, as dicts.
        self._named = not self._mark
        self._named_sql = self._head + "(" + ", ".join(f":{c}" for c in self.columns) + ")" + self._tail
        self._multi_row = dialect.name == "sqlite"
        # Bound parameters per statement: SQLite before 3.32 allows 999, later ones 32766.
        limit = 999 if dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 32) else 32766
        self._max_rows = max(1, min(max_rows, limit // len(self.columns)))
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        """The statement inserting ``rows`` rows.

        >>> from sqlalchemy.dialects import sqlite
        >>> InsertStatement(sqlite.dialect(), "action_sets").sql(2)
        'INSERT INTO action_sets ("key", actions, created_at) VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT DO NOTHING'
        """
        text = self._sql.get(rows)
        if text is None:
            one = "(" + ", ".join([self._mark] * len(self.columns)) + ")"
            text = self._sql[rows] = self._head + ", ".join([one] * rows) + self._tail
        return text

    def execute(self, cursor: Cursor, rows: Sequence[Row]) -> None:
        if self._named:
            cursor.executemany(self._named_sql, [dict(zip(self.columns, r, strict=True)) for r in rows])
            return
        if not self._multi_row:
            cursor.executemany(self.sql(1), list(rows))
            return
        i, n = 0, len(rows)
        while i < n:
            # The largest power of two that fits, capped: a few distinct texts, few statements.
            size = min(self._max_rows, 1 << ((n - i).bit_length() - 1))
            cursor.execute(self.sql(size), tuple(chain.from_iterable(rows[i:i + size])))
            i += size


def insert_batch(cursor: Cursor, statements: dict[str, InsertStatement], batch: Batch) -> None:
    """Every row of the batch, table by table in ``TABLE_ORDER`` (the caller commits)."""
    for table in TABLE_ORDER:
        rows = batch.get(table)
        if rows:
            encode = ENCODERS.get(table)
            statements[table].execute(cursor, list(map(encode, rows)) if encode else rows)


def worth_retrying(exc: BaseException) -> bool:
    """Whether a driver's error says the database is away (PEP 249's OperationalError, e.g. locked,
    restarting, the network gone) or the connection unusable (InterfaceError), not the batch wrong.

    By name, so that it holds for any DB-API module and for SQLAlchemy's wrappers of them.

    >>> worth_retrying(sqlite3.OperationalError("database is locked"))
    True
    >>> worth_retrying(sqlite3.IntegrityError("NOT NULL constraint failed"))
    False
    """
    return any(c.__name__ in ("OperationalError", "InterfaceError") for c in type(exc).__mro__)


@dataclass(frozen=True)
class DriverConnect:
    """How to open the database with its DB-API module alone, as SQLAlchemy would have."""

    module: str  # "sqlite3", "psycopg"
    args: tuple[Any, ...] = ()
    # Not in the repr: it may hold the database's password.
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    # Run on every new connection (SQLite's journal mode and sync level).
    on_connect: tuple[str, ...] = ()

    def open(self) -> Any:
        conn = importlib.import_module(self.module).connect(*self.args, **self.kwargs)
        execute_each(conn, self.on_connect)
        return conn


def execute_each(conn: Any, statements: Sequence[str]) -> None:
    """Runs each statement on a new DB-API connection (SQLite's pragmas, for the server's engine too)."""
    if statements:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()


@dataclass(frozen=True)
class WriterSetup:
    """What the server sends the writer process first, before any batch."""

    # For SQLAlchemy, when ``connect`` is None (a driver this module does not know). Not in the
    # repr: it may hold the database's password.
    url: str = field(repr=False)
    statements: dict[str, InsertStatement]
    connect: DriverConnect | None


class DriverCommitter:
    """Commits batches through one DB-API connection, opened again after the database went away."""

    def __init__(self, connect: DriverConnect, statements: dict[str, InsertStatement]) -> None:
        self._connect = connect
        self._statements = statements
        self._conn: Any = None

    def open(self) -> None:
        if self._conn is None:
            self._conn = self._connect.open()

    def commit(self, batch: Batch) -> Answer:
        """Commits the batch in one transaction: ok, or retry or refused with what went wrong."""
        try:
            self.open()
            cursor = self._conn.cursor()
            insert_batch(cursor, self._statements, batch)
            cursor.close()
            self._conn.commit()
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}"
            if worth_retrying(exc):
                self._abandon()
                return Answer("retry", what)
            self._roll_back()
            return Answer("refused", what)
        return OK

    def _roll_back(self) -> None:
        try:
            self._conn.rollback()
        except Exception:
            self._abandon()

    def _abandon(self) -> None:
        """Forgets the connection (closed if it can be): the next commit opens another."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - a connection already broken: nothing to close
                pass

    def close(self) -> None:
        self._abandon()
