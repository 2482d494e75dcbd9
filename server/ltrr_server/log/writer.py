"""Group commit: one thread drains a bounded queue of rows into one transaction per batch.

Throughput then depends on rows per transaction, not on one transaction per event.
Callers that must not answer before their rows are durable (reward acks) wait on the
``Future`` that ``submit`` returns; it resolves after the commit that holds their rows.
Rows are committed in submission order across tables, so a reward is never durable
before the decision it rewards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ltrr_server.errors import FailedPrecondition, Overloaded
from ltrr_server.log import schema
from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

Row = dict[str, Any]
# Tables whose rows may legitimately repeat (idempotent retries): insert-or-ignore.
_IGNORE_CONFLICTS = {"decisions", "rewards", "joined"}
_TABLE_ORDER = ("decisions", "rewards", "joined", "snapshots")


class EventLogWriter:
    """A bounded write queue and the thread that group-commits it.

    >>> import prometheus_client, tempfile
    >>> from ltrr_server.log import db
    >>> engine = db.create_engine(f"sqlite:///{tempfile.mkdtemp()}/log.db"); db.migrate(engine)
    >>> w = EventLogWriter(engine, Metrics(prometheus_client.CollectorRegistry()), max_queue_rows=100)
    >>> w.start()
    >>> fut = w.submit("snapshots", [dict(policy="p", lineage=1, model_version=1, last_joined_seq=0,
    ...     trigger="t", created_at=0.0, size_bytes=1, model=b"x")])
    >>> fut.result(timeout=5)
    >>> w.close()
    """

    def __init__(self, engine: sa.Engine, metrics: Metrics, max_queue_rows: int, batch_rows: int = 5000) -> None:
        self._engine = engine
        self._metrics = metrics
        self._max_rows = max_queue_rows
        self._batch_rows = batch_rows
        self._queue: deque[tuple[str, Sequence[Row], Future[None] | None]] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="ltrr-writer", daemon=True)
        dialect = engine.dialect.name
        self._insert_ignore: dict[str, sa.Insert] = {}
        for name in _IGNORE_CONFLICTS:
            table = schema.metadata.tables[name]
            if dialect == "postgresql":
                self._insert_ignore[name] = postgresql.insert(table).on_conflict_do_nothing()
            elif dialect == "sqlite":
                self._insert_ignore[name] = sqlite.insert(table).on_conflict_do_nothing()
            else:  # other dialects: plain insert (duplicates are filtered before they get here)
                self._insert_ignore[name] = table.insert()

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def room(self) -> int:
        return self._max_rows - self._queued_rows

    def submit(self, table: str, rows: Sequence[Row], *, force: bool = False) -> Future[None]:
        """Queues rows for the next commit. Raises Overloaded past the configured bound.

        ``force`` admits rows past the bound: for rows whose loss would lose data already
        promised elsewhere (joins of acknowledged rewards); they are bounded upstream.
        """
        fut: Future[None] = Future()
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
            self._cond.notify()
        return fut

    def barrier(self) -> Future[None]:
        """A future that resolves once everything submitted before it is committed."""
        return self.submit("barrier", [], force=True)

    def close(self, timeout: float = 30.0) -> None:
        """Commits what is queued, then stops the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[tuple[str, Sequence[Row], Future[None] | None]] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            batch = []
            rows = 0
            while self._queue and rows < self._batch_rows:
                item = self._queue.popleft()
                batch.append(item)
                rows += len(item[1])
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
            for attempt in range(5):
                start = time.perf_counter()
                try:
                    with self._engine.begin() as conn:
                        for table in _TABLE_ORDER:
                            table_rows = by_table.get(table)
                            if not table_rows:
                                continue
                            stmt = self._insert_ignore.get(table)
                            if stmt is None:
                                stmt = schema.metadata.tables[table].insert()
                            conn.execute(stmt, table_rows)
                    error = None
                    break
                except Exception as exc:  # the database is down or refused the batch
                    error = exc
                    self._metrics.db_write_errors.inc()
                    log.warning("group commit of %d rows failed (attempt %d): %s", n, attempt + 1, exc)
                    time.sleep(0.05 * 2**attempt)
            self._metrics.db_write_seconds.observe(time.perf_counter() - start)
            self._metrics.db_write_rows.observe(n)
            for _, _, fut in batch:
                if fut is None:
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
