"""How long a writer process takes to be ready, against a bare interpreter that imports the same
driver and connects.

    python -m bench.bench_writer_start [--db URL ...] [--runs 5]

Every server start waits for its writer process, and so does the first commit after one died.
Ours: ``ProcessCommitter.start`` from launch to its "ready" (the database open). The ceiling: a
plain ``python -c "import DRIVER; DRIVER.connect(...)"`` with the same arguments, which is all the
process must do before it can commit. Medians of ``--runs``; SQLite always, and each ``--db``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.common import save
from ltrr_server.log import db
from ltrr_server.log.writer import ProcessCommitter, committer_for


def _ours(engine: Any) -> float:
    committer = committer_for(engine, process=True)
    assert isinstance(committer, ProcessCommitter)
    t0 = time.perf_counter()
    committer.start()
    elapsed = time.perf_counter() - t0
    committer.close()
    return elapsed


def _bare(engine: Any) -> float:
    connect = db.driver_connect(engine)
    assert connect is not None
    # On standard input, not the command line: the arguments may hold the database's password.
    script = f"import {connect.module}; {connect.module}.connect(*{connect.args!r}, **{connect.kwargs!r}).close()"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-"], input=script, text=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", action="append", default=[], help="a PostgreSQL URL (repeatable)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for url in [f"sqlite:///{tempfile.mkdtemp()}/ltrr.db", *args.db]:
        engine = db.create_engine(url)
        db.migrate(engine)
        ours = statistics.median(_ours(engine) for _ in range(args.runs))
        bare = statistics.median(_bare(engine) for _ in range(args.runs))
        name = engine.dialect.name
        results[name] = {"ready_s": ours, "bare_driver_s": bare, "ratio": bare / ours}
        print(f"{name}: writer process ready in {ours:.3f} s; a bare interpreter importing its driver and "
              f"connecting: {bare:.3f} s; ratio {bare / ours:.2f}", flush=True)
        engine.dispose()
    save("writer_start", results)


if __name__ == "__main__":
    main()
