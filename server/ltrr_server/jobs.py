"""Long reads of the log (evaluations, tunings, exports) in a process of their own, one per call.

Why a process: an evaluation is minutes of VW predictions and JSON decoding, an export of a
million events a minute of JSON; in the server's process either would take the interpreter lock
from the decision path all that time. A spawned child runs on its own core, reads the log itself
and sends what it makes over a pipe: progress, chunks, a result. The call owns its child: a caller
that cancels or disconnects has it killed at once, a child that dies (killed, out of memory)
fails the call with UNAVAILABLE naming its exit code and is logged, and a stopping server kills
any left. A slow reader holds the child back (the pipe fills), not the server's memory. At most
``limits.max_evaluations`` jobs run at once; past that, RESOURCE_EXHAUSTED.

A job is any picklable object with ``run(store, send)``: it calls ``send`` with what the call
should stream back, in order.

An in-memory SQLite database cannot be read from another process: there a job runs on a thread
of the server's process instead.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from ltrr_server import errors
from ltrr_server.log import db
from ltrr_server.logs import DEFAULT_LOGS, LogSetup

if TYPE_CHECKING:
    from ltrr_server.log.store import EventLogStore

log = logging.getLogger(__name__)


class Job(Protocol):
    def run(self, store: EventLogStore, send: Callable[[object], None]) -> None:
        """Does the work, sending what the call streams back."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


@dataclass(frozen=True)
class _Done:
    """The job returned: nothing follows."""


@dataclass(frozen=True)
class _Failure:
    """An error raised in the job, by name: domain errors do not pickle with their fields."""

    kind: str
    field: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        if isinstance(exc, errors.LtrrError):
            return cls(type(exc).__name__, exc.field, exc.message)
        return cls("", "", f"{type(exc).__name__}: {exc}")

    def error(self) -> Exception:
        if self.kind == "InvalidArgument":
            return errors.InvalidArgument(self.field, self.message.removeprefix(f"{self.field}: "))
        cls = getattr(errors, self.kind, None)
        if isinstance(cls, type) and issubclass(cls, errors.LtrrError):
            return cls(self.message, field=self.field)
        log.error("a job failed: %s", self.message)
        return RuntimeError(self.message)


class _Cancelled(Exception):
    pass


def _child(conn: Connection, db_url: str, job: Job, logs: LogSetup) -> None:
    from ltrr_server.log.store import EventLogStore

    logs.apply()
    engine = db.create_engine(db_url)
    try:
        job.run(EventLogStore(engine), conn.send)
        conn.send(_Done())
    except BaseException as exc:  # every failure is the call's answer
        conn.send(_Failure.of(exc))
    finally:
        engine.dispose()
        conn.close()


class Jobs:
    """Runs jobs over one database, at most ``max_running`` at once."""

    def __init__(self, engine: sa.Engine, db_url: str, max_running: int, logs: LogSetup = DEFAULT_LOGS) -> None:
        self._logs = logs
        self._engine = engine
        self._db_url = db_url
        self._max_running = max_running
        self._running: set[Any] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self, job: Job) -> AsyncIterator[Any]:
        """What the job sends, in order; raises the job's error."""
        if len(self._running) >= self._max_running:
            raise errors.Overloaded(f"{len(self._running)} evaluations, tunings or exports are running, "
                                    f"limits.max_evaluations={self._max_running}: retry when one has finished")
        if db.in_memory(self._engine.url):
            async for item in self._in_thread(job):
                yield item
            return
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(child, self._db_url, job, self._logs), name="ltrr-job", daemon=True)
        self._running.add(process)
        try:
            process.start()
            child.close()
            loop = asyncio.get_running_loop()
            while True:
                ready = await loop.run_in_executor(None, parent.poll, 0.5)
                if not ready:
                    if not process.is_alive() and not parent.poll():
                        raise self._died(process)
                    continue
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    raise self._died(process) from None
                if isinstance(msg, _Failure):
                    raise msg.error()
                if isinstance(msg, _Done):
                    return
                yield msg
        finally:
            self._running.discard(process)
            parent.close()
            if process.is_alive():  # the caller left, or the server stops
                process.kill()
            if process.pid is not None:
                process.join(5)

    @staticmethod
    def _died(process: Any) -> Exception:
        process.join(5)
        log.error("a job process exited unexpectedly (exit code %s)", process.exitcode)
        return errors.Unavailable(f"the job's process exited unexpectedly (exit code {process.exitcode}); "
                                  "the server log says more")

    async def _in_thread(self, job: Job) -> AsyncIterator[Any]:
        from ltrr_server.log.store import EventLogStore

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        marker = object()
        self._running.add(marker)

        def send(item: object) -> None:
            if cancelled.is_set():
                raise _Cancelled()
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                job.run(EventLogStore(self._engine), send)
                end: object = _Done()
            except _Cancelled:
                return
            except BaseException as exc:
                end = _Failure.of(exc)
            loop.call_soon_threadsafe(queue.put_nowait, end)

        threading.Thread(target=work, name="ltrr-job", daemon=True).start()
        try:
            while True:
                msg = await queue.get()
                if isinstance(msg, _Failure):
                    raise msg.error()
                if isinstance(msg, _Done):
                    return
                yield msg
        finally:
            cancelled.set()
            self._running.discard(marker)

    def stop(self) -> None:
        """Kills every running job (their calls fail)."""
        for process in list(self._running):
            if hasattr(process, "kill") and process.is_alive():
                process.kill()
