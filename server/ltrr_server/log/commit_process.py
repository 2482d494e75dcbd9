"""The writer process: ``python -m ltrr_server.log.commit_process FD``, started by ``ProcessCommitter``.

Its first message on the socket FD is the ``WriterSetup``. It then commits each batch it receives
and answers each after its commit (``driver.Answer``: ok, retry or refused); before the first,
ready once the database is open, or failed with why. It ends when the server closes the socket, or dies.
It imports the database's driver and not SQLAlchemy (``driver`` says why), unless the driver is
one ``driver.DriverCommitter`` does not know.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection
from typing import Protocol

from ltrr_server.log.driver import Answer, Batch, DriverCommitter, WriterSetup


class _Commits(Protocol):
    def open(self) -> None: ...

    def commit(self, batch: Batch) -> Answer: ...

    def close(self) -> None: ...


def serve(conn: Connection) -> None:
    """The writer process's loop, on the server's end of the socket ``conn``."""
    try:
        setup: WriterSetup = conn.recv()
    except (EOFError, OSError):
        return  # the server is gone
    commits: _Commits
    if setup.connect is not None:
        commits = DriverCommitter(setup.connect, setup.statements)
    else:
        from ltrr_server.log.writer import EngineCommits

        commits = EngineCommits(setup.url, setup.statements)
    try:
        commits.open()
    except Exception as exc:
        conn.send(Answer("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Answer("ready"))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            break  # the server is gone
        if batch is None:
            break
        try:
            conn.send(commits.commit(batch))
        except OSError:
            break
    commits.close()


def main() -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the server flushes its queue through this
    # process before it closes the socket, which ends the loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ltrr_server.logs import LogSetup

    LogSetup.from_env().apply()
    serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
