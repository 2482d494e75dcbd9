"""Group commit: one thread drains a bounded queue of rows into one transaction per batch.

Throughput then depends on rows per transaction, not on one transaction per event.
Callers that must not answer before their rows are durable (reward acks) wait on the
``Future`` that ``submit`` returns; it resolves after the commit that holds their rows.
Rows are committed in submission order across tables, so a reward is never durable
before the decision it rewards.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from itertools import chain
from typing import Any

import sqlalchemy as sa

from ltrr_server.errors import FailedPrecondition, Overloaded
from ltrr_server.log.rows import ROW_TYPES
from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

# A row: one of the named tuples of ``rows``, fields in column order.
Row = tuple[Any, ...]
# Tables whose rows may legitimately repeat (idempotent retries): insert-or-ignore.
_IGNORE_CONFLICTS = {"action_sets", "decisions", "rewards", "joined"}
_TABLE_ORDER = ("action_sets", "decisions", "rewards", "joined", "snapshots")
# Rows in one INSERT statement (fewer where the database bounds the parameters of a statement).
MAX_ROWS_PER_STATEMENT = 256


class _InsertStatement:
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
    """

    def __init__(self, dialect: sa.Dialect, name: str, max_rows: int = MAX_ROWS_PER_STATEMENT) -> None:
        self.columns = list(ROW_TYPES[name]._fields)  # type: ignore[attr-defined]
        quote = dialect.identifier_preparer.quote
        cols = ", ".join(quote(c) for c in self.columns)
        self._head = f"INSERT INTO {name} ({cols}) VALUES "
        self._tail = " ON CONFLICT DO NOTHING" if name in _IGNORE_CONFLICTS else ""
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
        >>> _InsertStatement(sqlite.dialect(), "action_sets").sql(2)
        'INSERT INTO action_sets ("key", actions, created_at) VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT DO NOTHING'
        """
        text = self._sql.get(rows)
        if text is None:
            one = "(" + ", ".join([self._mark] * len(self.columns)) + ")"
            text = self._sql[rows] = self._head + ", ".join([one] * rows) + self._tail
        return text

    def execute(self, conn: sa.Connection, rows: Sequence[Row]) -> None:
        if self._named:
            conn.exec_driver_sql(self._named_sql, [dict(zip(self.columns, r, strict=True)) for r in rows])
            return
        if not self._multi_row:
            conn.exec_driver_sql(self.sql(1), list(rows))
            return
        i, n = 0, len(rows)
        while i < n:
            # The largest power of two that fits, capped: a few distinct texts, few statements.
            size = min(self._max_rows, 1 << ((n - i).bit_length() - 1))
            conn.exec_driver_sql(self.sql(size), tuple(chain.from_iterable(rows[i:i + size])))
            i += size


class EventLogWriter:
    """A bounded write queue and the thread that group-commits it.

    >>> import prometheus_client, tempfile
    >>> from ltrr_server.log import db
    >>> engine = db.create_engine(f"sqlite:///{tempfile.mkdtemp()}/log.db"); db.migrate(engine)
    >>> w = EventLogWriter(engine, Metrics(prometheus_client.CollectorRegistry()), max_queue_rows=100)
    >>> w.start()
    >>> from ltrr_server.log.rows import SnapshotRow
    >>> fut = w.submit("snapshots", [SnapshotRow("p", 1, 1, 0, "t", 0.0, 1, b"x")])
    >>> fut.result(timeout=5)
    >>> w.close()
    """

    def __init__(
        self, engine: sa.Engine, metrics: Metrics, max_queue_rows: int, batch_rows: int = 5000,
        linger: float = 0.0, idle_linger: float = 0.0,
    ) -> None:
        self._linger = linger
        self._idle_linger = max(linger, idle_linger)
        self._engine = engine
        self._metrics = metrics
        self._max_rows = max_queue_rows
        self._batch_rows = batch_rows
        self._queue: deque[tuple[str, Sequence[Row], Future[None] | None]] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._idle = False
        self._waiters = 0
        self._thread = threading.Thread(target=self._run, name="ltrr-writer", daemon=True)
        self._statements = {name: _InsertStatement(engine.dialect, name) for name in _TABLE_ORDER}

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def room(self) -> int:
        return self._max_rows - self._queued_rows

    def submit(self, table: str, rows: Sequence[Row], *, force: bool = False) -> Future[None]:
        """Queues rows for the next commit; the future resolves after it. Raises Overloaded past the bound.

        ``force`` admits rows past the bound: for rows whose loss would lose data already
        promised elsewhere (joins of acknowledged rewards); they are bounded upstream.
        """
        fut: Future[None] = Future()
        self._enqueue(table, rows, fut, force)
        return fut

    def append(self, table: str, rows: Sequence[Row]) -> None:
        """Queues rows nobody waits for (decisions, joins), past the bound: they are bounded upstream."""
        self._enqueue(table, rows, None, True)

    def _enqueue(self, table: str, rows: Sequence[Row], fut: Future[None] | None, force: bool) -> None:
        with self._cond:
            if self._closing:
                raise FailedPrecondition("the event log is closing")
            if not force and self._queued_rows + len(rows) > self._max_rows:
                raise Overloaded(
                    f"write queue full ({self._queued_rows} rows queued, limits.max_write_queue_rows="
                    f"{self._max_rows}); retry with backoff"
                )
            self._queue.append((table, rows, fut))
            self._queued_rows += len(rows)
            # Wake the writer when it idles, a full batch waits, or the first waiter arrives (which
            # shortens the linger); waking it for every row would make each row its own transaction.
            if fut is not None:
                self._waiters += 1
            if self._idle or self._queued_rows >= self._batch_rows or (fut is not None and self._waiters == 1):
                self._cond.notify()

    def barrier(self) -> Future[None]:
        """A future that resolves once everything submitted before it is committed."""
        return self.submit("barrier", [], force=True)

    def close(self, timeout: float = 30.0) -> None:
        """Commits what is queued, then stops the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take_batch(self) -> list[tuple[str, Sequence[Row], Future[None] | None]] | None:
        with self._cond:
            self._idle = True
            while not self._queue and not self._closing:
                self._cond.wait()
            self._idle = False
            if not self._queue:
                return None
            # Group commit: give concurrent writers a moment to join this transaction, so a steady
            # trickle costs tens of commits a second, not one per event. Someone waiting for an ack
            # shortens the wait to `linger`; rows nobody waits for (decisions, joins) wait longer.
            start = time.monotonic()
            while not self._closing and self._queued_rows < self._batch_rows:
                remaining = start + (self._linger if self._waiters else self._idle_linger) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = []
            rows = 0
            while self._queue and rows < self._batch_rows:
                item = self._queue.popleft()
                batch.append(item)
                rows += len(item[1])
                if item[2] is not None:
                    self._waiters -= 1
            self._queued_rows -= rows
            self._metrics.write_queue_rows.set(self._queued_rows)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            by_table: dict[str, list[Row]] = {}
            for table, rows, _ in batch:
                if rows:
                    by_table.setdefault(table, []).extend(rows)
            n = sum(len(r) for r in by_table.values())
            error: BaseException | None = None
            attempt = 0
            while True:
                start = time.perf_counter()
                try:
                    with self._engine.begin() as conn:
                        for table in _TABLE_ORDER:
                            table_rows = by_table.get(table)
                            if not table_rows:
                                continue
                            self._statements[table].execute(conn, table_rows)
                    error = None
                    break
                except sa.exc.OperationalError as exc:
                    # The database is away (restarting, locked, network): keep the rows and try
                    # again. Nothing is acknowledged meanwhile; the bounded queue pushes back.
                    error = exc
                    attempt += 1
                    self._metrics.db_write_errors.inc()
                    log.warning("group commit of %d rows failed (attempt %d), retrying: %s", n, attempt, exc)
                    time.sleep(min(5.0, 0.05 * 2**attempt))
                except Exception as exc:  # the batch itself was refused: retrying cannot help
                    error = exc
                    self._metrics.db_write_errors.inc()
                    log.error("group commit of %d rows refused: %s", n, exc)
                    break
            self._metrics.db_write_seconds.observe(time.perf_counter() - start)
            self._metrics.db_write_rows.observe(n)
            for _, _, fut in batch:
                if fut is None:
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
