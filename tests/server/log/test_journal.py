"""The journal: rows nobody waits for survive the death of the process that answered them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ltrr_server.log import db
from ltrr_server.log.journal import DamagedFrame, Journal, leftovers, read_segment
from ltrr_server.log.rows import DecisionRecord
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from tests.helpers import rows

# A writer in a child process appends decisions while its commits linger for a second, says how
# many it appended, and is killed before their commit: the state an answered decision is in during
# a group commit's linger.
_DIE_BEFORE_COMMIT = """
import json, os, signal, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from ltrr_server.log import db
from ltrr_server.log.journal import Journal
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from tests.server.log.test_journal import decision

url, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
engine = db.create_engine(url)
w = EventLogWriter(engine, Metrics(CollectorRegistry()), max_queue_rows=100_000, idle_linger=1.0,
                   process=url.startswith("postgresql"))
w.start(Journal(folder))
for i in range(n):
    w.append("decisions", [decision(i)])
print(json.dumps({"appended": n}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def decision(i: int) -> DecisionRecord:
    return DecisionRecord(f"e{i}", "p", 1, 10.0, 40.0, [("user", [("segment", f"s{i % 3}"), ("age", 31.0)])],
                          '[["a",[]],["b",[]]]', [[0.25, 0.75]], [1], True, 3, True)


def _writer(db_url: str, **kw: object) -> EventLogWriter:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    return EventLogWriter(engine, Metrics(CollectorRegistry()), max_queue_rows=100_000, **kw)  # type: ignore[arg-type]


def test_decisions_answered_before_a_kill_are_committed_by_the_next_start(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    _writer(db_url).close()  # the schema
    out = subprocess.run([sys.executable, "-c", _DIE_BEFORE_COMMIT, db_url, str(folder), "500"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    assert json.loads(out.stdout)["appended"] == 500
    # The kill came before the commit: without the journal these decisions were gone.
    assert len(rows(db_url, "decisions")) < 500

    w = _writer(db_url)
    w.start(Journal(folder))
    assert w.replay(folder) == 500
    logged = rows(db_url, "decisions")
    assert sorted(r["event_id"] for r in logged) == sorted(f"e{i}" for i in range(500))
    assert json.loads(next(r for r in logged if r["event_id"] == "e4")["context"]) == \
        [["user", [["segment", "s1"], ["age", 31.0]]]]
    assert leftovers(folder) == []  # replayed once: a later start finds nothing
    w.close()
    assert not folder.exists(), "a clean stop leaves no journal behind"


def test_a_frame_cut_short_by_the_kill_ends_its_segment(sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    j = Journal(folder)
    j.open()
    for i in range(3):
        j.write("decisions", [decision(i)])
    assert j.path is not None
    path = j.path
    j.close(delete=False)
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the last write cut short
    frames = []
    with pytest.raises(DamagedFrame, match="cut short"):
        for frame in read_segment(path):
            frames.append(frame)
    assert [rows_[0][0] for _, rows_ in frames] == ["e0", "e1"]

    w = _writer(sqlite_url)
    w.start()
    assert w.replay(folder) == 2
    assert sorted(r["event_id"] for r in rows(sqlite_url, "decisions")) == ["e0", "e1"]
    w.close()


def test_segments_are_deleted_once_committed_under_steady_traffic(sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    w = _writer(sqlite_url, idle_linger=0.01)
    w.start(Journal(folder))
    end = time.monotonic() + 3.5
    i = 0
    while time.monotonic() < end:
        w.append("decisions", [decision(i)])
        i += 1
        time.sleep(0.0005)
    w.barrier().result(timeout=10)
    # One segment a second is written; each goes once the commit after it lands.
    assert len(list(folder.glob("*.journal"))) <= 2
    w.close()
    assert len(rows(sqlite_url, "decisions")) == i
    assert not folder.exists()


def test_a_live_writers_segment_is_not_replayed_by_another(sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    first = _writer(sqlite_url, idle_linger=1.0)
    first.start(Journal(folder))
    first.append("decisions", [decision(1)])
    second = _writer(sqlite_url)
    second.start(Journal(folder))
    assert second.replay(folder) == 0
    first.close()
    second.close()
    assert [r["event_id"] for r in rows(sqlite_url, "decisions")] == ["e1"]
