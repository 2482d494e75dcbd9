"""Group commit: one thread drains a bounded queue of rows into one transaction per batch.

Throughput then depends on rows per transaction, not on one transaction per event.
Callers that must not answer before their rows are durable (reward acks) wait on the
``Future`` that ``submit`` returns; it resolves after the commit that holds their rows.
Rows are committed in submission order across tables, so a reward is never durable
before the decision it rewards.

Where the SQL runs: by default in a child process (``ProcessCommitter``). Handing a driver its
parameters holds the interpreter lock (about 3.5 us of a reward's 5 us of writing on SQLite), and
every statement must win the lock back from the busy event loop, which the writer then slows by
as much again. The child binds and commits on the other core; this process only pickles plain
tuples to it (0.25 us a reward) and waits for the commit's answer with the lock released. An
in-memory SQLite database cannot be shared with a child, so it is written from the thread
(``ThreadCommitter``), as any database can be with ``server.writer_process = false``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from ltrr_server.errors import FailedPrecondition, Overloaded
from ltrr_server.log import db
from ltrr_server.log.driver import (
    OK,
    TABLE_ORDER,
    Answer,
    Batch,
    InsertStatement,
    Row,
    WriterSetup,
    insert_batch,
    worth_retrying,
)
from ltrr_server.log.journal import DamagedFrame, Journal, leftovers, read_segment
from ltrr_server.logs import DEFAULT_LOGS, LogSetup
from ltrr_server.metrics import Metrics

log = logging.getLogger(__name__)

# Seconds a writer process may take to import its driver and open the database.
_START_TIMEOUT = 120.0
# Seconds a commit may take before its writer process is taken for hung (a database that stopped
# answering without closing the connection) and replaced; the batch then goes to the new one.
COMMIT_TIMEOUT = 60.0
# A journal segment is replaced after this long or this many bytes: what a start replays after a
# kill is at most about this much (replaying rows that did land costs an ignored insert).
JOURNAL_SEGMENT_SECONDS = 1.0
JOURNAL_SEGMENT_BYTES = 64 * 2**20


class RetryableWriteError(Exception):
    """The database was away (restarting, locked, network) or the writer process died: try again."""


class WriteRefused(Exception):
    """The database refused the batch itself: retrying cannot help."""


class _SqlalchemyCursor:
    """A SQLAlchemy connection behind a DB-API cursor's two verbs: its errors stay wrapped."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> None:
        self._conn.exec_driver_sql(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> None:
        self._conn.exec_driver_sql(sql, list(seq_of_parameters))


def _commit(engine: sa.Engine, statements: dict[str, InsertStatement], batch: Batch) -> Answer:
    """Commits the batch in one transaction: ok, or retry or refused with what went wrong."""
    try:
        with engine.begin() as conn:
            insert_batch(_SqlalchemyCursor(conn), statements, batch)
    except Exception as exc:
        if worth_retrying(exc):  # the database is away
            return Answer("retry", str(exc))
        return Answer("refused", f"{type(exc).__name__}: {exc}")
    return OK


def _raise_for(answer: Answer) -> None:
    if answer.kind == "retry":
        raise RetryableWriteError(answer.message)
    if answer.kind == "refused":
        raise WriteRefused(answer.message)


class Committer(Protocol):
    """Commits one batch in one transaction, or raises (``RetryableWriteError`` when worth retrying)."""

    def launch(self) -> None: ...

    def start(self) -> None: ...

    def commit(self, batch: Batch) -> None: ...

    def running(self) -> bool:
        """Whether what commits is there to take the next batch."""

    def revive(self) -> None:
        """Replaces what commits if it died (a commit in progress replaces it by itself)."""

    def close(self) -> None: ...


class ThreadCommitter:
    """Runs the SQL in the calling thread (the writer's)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._statements = statements_for(engine.dialect)

    def launch(self) -> None:
        pass

    def start(self) -> None:
        pass

    def commit(self, batch: Batch) -> None:
        _raise_for(_commit(self._engine, self._statements, batch))

    def running(self) -> bool:
        return True

    def revive(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessCommitter:
    """Runs the SQL in a child process (``python -m ltrr_server.log.commit_process``), one batch at a
    time over a socket pair.

    A plain interpreter, not a multiprocessing child: a spawned child would import the server's
    main module first (grpc, VW and the rest), and its start would take seconds instead of the
    0.1 s its driver takes (``driver``). Its first message is the ``WriterSetup``: the statements
    and how to connect. A child that dies is started again and the batch sent again:
    every table the hot path writes ignores repeated rows, so a batch the dead child had
    committed lands once.
    """

    def __init__(self, setup: WriterSetup, commit_timeout: float = COMMIT_TIMEOUT,
                 logs: LogSetup = DEFAULT_LOGS) -> None:
        self._setup = setup
        self._commit_timeout = commit_timeout
        self._logs = logs
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._kill_at_exit_registered = False
        # Held by the commit in progress: the supervisor replaces a dead child only between commits.
        self._lock = threading.Lock()
        self._closed = False

    def launch(self) -> None:
        """Starts the child without waiting for it: its imports overlap the rest of the start-up."""
        if self._conn is not None:
            return
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, **self._logs.env(),
                   PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ltrr_server.log.commit_process", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            )
        if not self._kill_at_exit_registered:
            # Once per committer, not per child: a child that keeps failing to start is replaced
            # again and again, and each registration would be kept until exit.
            atexit.register(self._kill_child_at_exit)
            self._kill_at_exit_registered = True
        self._conn = Connection(ours.detach())
        self._ready = False
        try:
            self._conn.send(self._setup)
        except OSError:
            pass  # the child is gone already: ``start`` says so

    def start(self) -> None:
        """Launches the child if needed and waits until it has opened the database: otherwise the
        first commits (and their acks) would wait for a process start."""
        self.launch()
        assert self._conn is not None
        if self._ready:
            return
        if not self._conn.poll(_START_TIMEOUT):
            raise RuntimeError(f"the writer process did not start within {_START_TIMEOUT:.0f}s")
        try:
            answer: Answer = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError("the writer process exited at start; see its error above") from exc
        if answer.kind != "ready":
            raise RuntimeError(f"the writer process could not open the database: {answer.message}")
        self._ready = True

    def running(self) -> bool:
        process = self._process
        return self._closed or (process is not None and process.poll() is None)

    def revive(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a commit is in progress: it finds the child gone and starts another itself
        try:
            if self._closed or self.running():
                return
            code = self._process.poll() if self._process is not None else None
            log.error("the writer process exited (code %s); starting another", code)
            self._stop_child()
            self.start()
        finally:
            self._lock.release()

    def commit(self, batch: Batch) -> None:
        with self._lock:
            self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        if self._conn is None or not self._ready:
            try:
                self.start()
            except Exception as exc:  # retried by the caller, with backoff
                self._stop_child()
                raise RetryableWriteError(f"cannot start the writer process: {exc}") from exc
        assert self._conn is not None
        # Plain tuples: a named tuple pickles through a Python-level method, 7x slower.
        plain = {table: list(map(tuple, rows)) for table, rows in batch.items()}
        try:
            self._conn.send(plain)
            if not self._conn.poll(self._commit_timeout):
                log.error("the writer process gave no answer in %.0fs (the database hangs?): replacing it",
                          self._commit_timeout)
                self._stop_child()
                raise RetryableWriteError(f"no answer from the writer process in {self._commit_timeout:.0f}s")
            answer = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.poll() if self._process is not None else None
            log.error("the writer process exited (code %s); the batch goes to a new one", code)
            self._stop_child()
            raise RetryableWriteError(f"the writer process exited (code {code})") from exc
        _raise_for(answer)

    def _stop_child(self) -> None:
        """Forgets the child (killed if still alive); the next commit starts a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._ready = False
        if self._process is not None:
            _kill_if_alive(self._process)
            self._process.wait(5)
            self._process = None

    def _kill_child_at_exit(self) -> None:
        if self._process is not None:
            _kill_if_alive(self._process)

    def close(self) -> None:
        self._closed = True
        if self._conn is None:
            return
        try:
            self._conn.send(None)  # every batch sent was answered: nothing is left to commit
        except OSError:
            pass
        assert self._process is not None
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._stop_child()


def _kill_if_alive(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


class EngineCommits:
    """The writer process's commits through SQLAlchemy: for a driver ``driver.DriverCommitter``
    does not know (it imports SQLAlchemy, so that process starts in about 1 s instead of 0.1 s)."""

    def __init__(self, url: str, statements: dict[str, InsertStatement]) -> None:
        self._engine = db.create_engine(url)
        self._statements = statements

    def open(self) -> None:
        with self._engine.connect():
            pass

    def commit(self, batch: Batch) -> Answer:
        return _commit(self._engine, self._statements, batch)

    def close(self) -> None:
        self._engine.dispose()


def statements_for(dialect: sa.Dialect) -> dict[str, InsertStatement]:
    return {name: InsertStatement(dialect, name) for name in TABLE_ORDER}


def committer_for(engine: sa.Engine, process: bool, commit_timeout: float = COMMIT_TIMEOUT,
                  logs: LogSetup = DEFAULT_LOGS) -> Committer:
    """A ``ProcessCommitter`` when asked and the database can be opened by another process."""
    if process and not db.in_memory(engine.url):
        setup = WriterSetup(engine.url.render_as_string(hide_password=False), statements_for(engine.dialect),
                            db.driver_connect(engine))
        return ProcessCommitter(setup, commit_timeout, logs)
    return ThreadCommitter(engine)


class EventLogWriter:
    """A bounded write queue and the thread that group-commits it.

    Nothing a caller does reaches this thread: a caller that stops waiting (a cancelled call, a
    deadline) cancels only its own future, which the writer then skips; its rows are committed all
    the same. A batch the database refuses is cut in halves until the refused submission stands
    alone, so one bad row fails its own caller only.

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
        linger: float = 0.0, idle_linger: float = 0.0, process: bool = False, commit_timeout: float = COMMIT_TIMEOUT,
        logs: LogSetup = DEFAULT_LOGS,
    ) -> None:
        self._linger = linger
        self._idle_linger = max(linger, idle_linger)
        self._metrics = metrics
        self._max_rows = max_queue_rows
        self._batch_rows = batch_rows
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        # After this (monotonic) time a closing writer stops retrying a database that is away.
        self._give_up_at = math.inf
        self._idle = False
        self._waiters = 0
        # Monotonic time since which the batch in hand has been trying to commit (0: none in hand).
        self._committing_since = 0.0
        self._thread: threading.Thread | None = None
        self._committer = committer_for(engine, process, commit_timeout, logs)
        self._journal: Journal | None = None
        # Submissions queued and taken so far; a retired journal segment holds submissions up to
        # its mark, and is deleted once the writer has committed that far.
        self._enqueued = 0
        self._taken = 0
        self._retired: list[tuple[int, Path]] = []
        # A batch did not land (given up at close, or an unexpected fault): the journal is kept.
        self._gave_up = False

    def launch(self) -> None:
        """Starts what commits (a writer process) early, without waiting for it; ``start`` waits."""
        self._committer.launch()

    def start(self, journal: Journal | None = None) -> None:
        """Starts committing. With a ``journal``, rows nobody waits for are written to it before
        ``append`` returns (see ``log/journal.py``); ``replay`` first commits what a dead writer left there."""
        self._committer.start()
        if journal is not None:
            journal.open()
            self._journal = journal
        self._start_thread()

    def replay(self, folder: Path) -> int:
        """Commits the rows that writers which died left in ``folder``'s journal; returns how many.

        Call it after ``start`` and before anything reads the log: rows committed before their
        writer died are ignored (insert-or-ignore), and a damaged frame ends its segment's reading.
        """
        replayed = 0
        for path in leftovers(folder):  # never this writer's own segment: it holds that one's lock
            futures: list[Future[None]] = []
            try:
                for table, rows in read_segment(path):
                    futures.append(self.submit(table, rows, force=True))
                    replayed += len(rows)
            except DamagedFrame as exc:
                log.error("journal: %s; the rows before it are replayed", exc)
            except (ValueError, EOFError, TypeError) as exc:  # marshal's errors on bytes it cannot read
                log.error("journal: %s could not be read (%s); the rows before it are replayed", path.name, exc)
            for fut in futures:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 - refused rows are counted by the writer
                    log.error("journal: rows of %s refused: %s", path.name, exc)
            path.unlink(missing_ok=True)
        if replayed:
            self._metrics.journal_replayed_rows.inc(replayed)
            log.warning("journal: committed %d rows answered before the last server died", replayed)
        return replayed

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ltrr-writer", daemon=True)
        self._thread.start()

    # --- supervision -------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether the thread that commits runs (or the writer was closed, as it should be)."""
        return self._closing or (self._thread is not None and self._thread.is_alive())

    def restart(self) -> None:
        """A new commit thread over the same queue: nothing queued is lost when a thread dies."""
        if not self.running():
            self._start_thread()

    def committer_running(self) -> bool:
        return self._closing or self._committer.running()

    def restart_committer(self) -> None:
        self._committer.revive()

    def stalled_seconds(self) -> float:
        """How long the batch in hand has been failing to commit (0 while commits land)."""
        since = self._committing_since
        return time.monotonic() - since if since else 0.0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def room(self) -> int:
        return self._max_rows - self._queued_rows

    @property
    def max_rows(self) -> int:
        return self._max_rows

    def submit(self, table: str, rows: Sequence[Row], *, force: bool = False) -> Future[None]:
        """Queues rows for the next commit; the future resolves after it. Raises Overloaded past the bound.

        ``force`` admits rows past the bound: for rows whose loss would lose data already
        promised elsewhere (joins of acknowledged rewards); they are bounded upstream.
        Cancelling the future only says nobody waits for it: the rows are committed all the same.
        """
        fut: Future[None] = Future()
        self._enqueue(table, rows, fut, force)
        return fut

    def append(self, table: str, rows: Sequence[Row]) -> None:
        """Queues rows nobody waits for (decisions, joins), past the bound: they are bounded upstream.

        With a journal, the rows are in it when this returns: a caller answered after it keeps its
        rows even if this process dies before their commit."""
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
            if fut is None and self._journal is not None and self._journal.is_open:
                self._journal.write(table, rows)
            self._queue.append((table, rows, fut))
            self._enqueued += 1
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
        """Commits what is queued, then stops the thread (and the writer process).

        A database that stays away is retried until ``timeout``; then what could not be
        committed is counted in the log (nothing of it was acknowledged) and the writer stops.
        """
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout + 5.0)
        committed_all = not self._queue and not self._gave_up and (thread is None or not thread.is_alive())
        if not committed_all:
            log.error("the event log closed with %d rows not committed (the database was away)%s", self._queued_rows,
                      "; the journal keeps the decisions among them for the next start" if self._journal else "")
        if self._journal is not None:
            with self._cond:
                if committed_all:
                    self._forget_journal_up_to(self._enqueued)
                self._journal.close(delete=committed_all)
        self._committer.close()

    def _take_batch(self) -> list[_Item] | None:
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
                table, item_rows, fut = self._queue.popleft()
                if fut is not None:
                    self._waiters -= 1
                    # From here on the caller can no longer cancel it; one that already left
                    # (cancelled) is not told: its rows are committed all the same.
                    if not fut.set_running_or_notify_cancel():
                        fut = None
                batch.append((table, item_rows, fut))
                rows += len(item_rows)
            self._taken += len(batch)
            journal = self._journal
            if journal is not None and journal.is_open and journal.due(JOURNAL_SEGMENT_SECONDS, JOURNAL_SEGMENT_BYTES):
                self._retired.append((self._enqueued, journal.rotate()))
            self._queued_rows -= rows
            self._metrics.write_queue_rows.set(self._queued_rows)
            self._committing_since = time.monotonic()
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            taken = self._taken
            try:
                if self._write(batch):
                    self._forget_journal_up_to(taken)
                else:
                    self._gave_up = True
            except BaseException as exc:  # a fault here must not stop the write path
                log.exception("group commit of %d submissions failed unexpectedly", len(batch))
                self._gave_up = True
                _resolve(batch, exc)
            finally:
                self._committing_since = 0.0

    def _forget_journal_up_to(self, committed: int) -> None:
        """Deletes the retired journal segments whose every submission is now committed.

        After a batch that did not land, none: they all go to the next start, which replays them."""
        while not self._gave_up and self._retired and self._retired[0][0] <= committed:
            _, path = self._retired.pop(0)
            path.unlink(missing_ok=True)

    def _write(self, batch: list[_Item]) -> bool:
        """Commits the batch, or the parts of it the database takes, in submission order.

        False when a closing writer gave up on the database (the rows stay in the journal)."""
        error = self._commit_retrying(batch)
        if error is None or isinstance(error, RetryableWriteError):  # committed, or given up at close
            _resolve(batch, error)
            return error is None
        if len(batch) > 1:
            # Refused: find the submission the database refuses, so the others still land.
            half = len(batch) // 2
            first = self._write(batch[:half])
            return self._write(batch[half:]) and first
        table, rows, _ = batch[0]
        self._metrics.db_rows_refused.inc(len(rows))
        log.error("the database refused %d %s rows: %s", len(rows), table, error)
        _resolve(batch, error)
        return True  # a replay would be refused the same way

    def _commit_retrying(self, batch: list[_Item]) -> Exception | None:
        """Commits the batch in one transaction, retrying while the database is away.

        Returns None once committed, the refusal, or the last retryable error when a closing
        writer gives up."""
        by_table: Batch = {}
        for table, rows, _ in batch:
            if rows:
                by_table.setdefault(table, []).extend(rows)
        n = sum(len(r) for r in by_table.values())
        attempt = 0
        while True:
            start = time.perf_counter()
            try:
                self._committer.commit(by_table)
            except RetryableWriteError as exc:
                # The database is away (restarting, locked, network): keep the rows and try
                # again. Nothing is acknowledged meanwhile; the bounded queue pushes back.
                attempt += 1
                self._metrics.db_write_errors.inc()
                if time.monotonic() >= self._give_up_at:
                    log.error("group commit of %d rows given up at close after %d attempts: %s", n, attempt, exc)
                    return exc
                log.warning("group commit of %d rows failed (attempt %d), retrying: %s", n, attempt, exc)
                time.sleep(min(5.0, 0.05 * 2**attempt, max(0.0, self._give_up_at - time.monotonic())))
                continue
            except Exception as exc:  # the batch itself was refused (WriteRefused): retrying cannot help
                self._metrics.db_write_errors.inc()
                return exc
            self._metrics.db_write_seconds.observe(time.perf_counter() - start)
            self._metrics.db_write_rows.observe(n)
            return None


# One submission: its table, its rows, and the future of whoever waits for their commit.
_Item = tuple[str, Sequence[Row], "Future[None] | None"]


def _resolve(batch: list[_Item], error: BaseException | None) -> None:
    """Tells every caller still waiting how its submission went (futures are already running)."""
    for _, _, fut in batch:
        if fut is None or fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
