"""The writer process: ``python -m ltrr_server.log.commit_process FD``, started by ``ProcessCommitter``.

It commits the batches it receives on the socket FD to the database named by ``LTRR_WRITER_URL``
and answers each after its commit. It ends when the server closes the socket, or dies.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection


def main() -> None:
    # Ctrl-C and SIGTERM reach the whole process group: the server flushes its queue through this
    # process before it closes the socket, which ends the loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ltrr_server.log.writer import serve_commits
    from ltrr_server.logs import LogSetup

    LogSetup.from_env().apply()

    serve_commits(Connection(int(sys.argv[1])), os.environ["LTRR_WRITER_URL"])


if __name__ == "__main__":
    main()
