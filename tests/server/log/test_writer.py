"""Group commit on real databases: order, durability at the future, the bound."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ltrr_server.errors import Overloaded
from ltrr_server.log import db
from ltrr_server.log.driver import WriterSetup
from ltrr_server.log.rows import RewardRow
from ltrr_server.log.writer import (
    EventLogWriter,
    ProcessCommitter,
    ThreadCommitter,
    WriteRefused,
    committer_for,
    statements_for,
)
from ltrr_server.metrics import Metrics
from tests.helpers import rows


def reward(i: int, event: str = "e") -> RewardRow:
    return RewardRow(event, str(i), float(i), None, None, None, "accepted", 0.0)


@pytest.fixture(params=[False, True], ids=["thread", "process"])
def process(request: pytest.FixtureRequest) -> bool:
    """Whether the SQL runs in a writer process (the server's default) or in the writer thread."""
    return bool(request.param)


def test_many_submissions_share_commits_and_all_land(db_url: str, process: bool) -> None:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    metrics = Metrics(CollectorRegistry())
    w = EventLogWriter(engine, metrics, max_queue_rows=100_000, batch_rows=1000, process=process)
    futures = [w.submit("rewards", [reward(i)]) for i in range(3000)]
    w.start()
    for f in futures:
        f.result(timeout=30)
    assert len(rows(db_url, "rewards")) == 3000
    commits = metrics.registry.get_sample_value("ltrr_db_write_seconds_count")
    assert commits is not None and commits <= 10  # 3000 rows, at most 1000 per commit
    # Idempotent: the same (event, reward id) again changes nothing.
    w.submit("rewards", [reward(5)]).result(timeout=10)
    assert len(rows(db_url, "rewards")) == 3000
    w.close()
    engine.dispose()


def test_queue_bound(sqlite_url: str) -> None:
    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    w = EventLogWriter(engine, Metrics(CollectorRegistry()), max_queue_rows=10)
    w.submit("rewards", [reward(i) for i in range(10)])
    with pytest.raises(Overloaded, match="max_write_queue_rows"):
        w.submit("rewards", [reward(11)])
    w.submit("rewards", [reward(12)], force=True)  # joins of acked rewards are never refused
    w.start()
    w.barrier().result(timeout=10)
    assert len(rows(sqlite_url, "rewards")) == 11
    w.close()


@pytest.mark.parametrize("n", [1, 255, 256, 257, 1003])
def test_a_batch_lands_whole_at_any_size(db_url: str, n: int, process: bool) -> None:
    # SQLite takes many rows per statement, cut in power-of-two counts: every cut must hold,
    # and a row repeated inside the batch is stored once.
    engine = db.create_engine(db_url)
    db.migrate(engine)
    w = EventLogWriter(engine, Metrics(CollectorRegistry()), max_queue_rows=10_000, process=process)
    w.start()
    batch = [reward(i) for i in range(n)]
    w.submit("rewards", batch + batch[:1]).result(timeout=30)
    stored = rows(db_url, "rewards")
    assert sorted((r["reward_id"], r["value"]) for r in stored) == sorted((str(i), float(i)) for i in range(n))
    w.close()
    engine.dispose()


def test_a_writer_process_that_dies_is_replaced_and_nothing_is_lost(db_url: str) -> None:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    metrics = Metrics(CollectorRegistry())
    w = EventLogWriter(engine, metrics, max_queue_rows=10_000, process=True)
    w.start()
    w.submit("rewards", [reward(i) for i in range(10)]).result(timeout=30)
    committer = w._committer
    assert isinstance(committer, ProcessCommitter)
    first = committer._process
    assert first is not None
    first.kill()
    first.wait(10)
    # The next batch finds the child gone, starts another and lands through it.
    w.submit("rewards", [reward(i) for i in range(10, 20)]).result(timeout=60)
    assert committer._process is not None and committer._process.pid != first.pid
    assert sorted(int(r["reward_id"]) for r in rows(db_url, "rewards")) == list(range(20))
    assert metrics.registry.get_sample_value("ltrr_db_write_errors_total") == 1
    w.close()
    assert committer._process is None  # closed with the writer
    engine.dispose()


def test_an_in_memory_database_is_written_from_the_thread() -> None:
    engine = db.create_engine("sqlite://")
    assert isinstance(committer_for(engine, process=True), ThreadCommitter)


def test_a_submission_the_database_refuses_fails_alone(db_url: str, process: bool) -> None:
    from ltrr_server.log.rows import SnapshotRow

    engine = db.create_engine(db_url)
    db.migrate(engine)
    metrics = Metrics(CollectorRegistry())
    w = EventLogWriter(engine, metrics, max_queue_rows=10_000, process=process)
    # Queued together, so that they share one group commit: the bad row must not sink the others.
    before = w.submit("rewards", [reward(i) for i in range(5)])
    bad = w.submit("snapshots", [SnapshotRow(None, 1, 1, 0, "t", 0.0, 1, b"x")])  # type: ignore[arg-type]
    after = w.submit("rewards", [reward(i) for i in range(5, 10)])
    w.start()
    before.result(timeout=30)
    after.result(timeout=30)
    with pytest.raises(WriteRefused):
        bad.result(timeout=30)
    assert sorted(int(r["reward_id"]) for r in rows(db_url, "rewards")) == list(range(10))
    assert metrics.registry.get_sample_value("ltrr_db_rows_refused_total") == 1
    w.close()
    engine.dispose()


def test_a_caller_that_stops_waiting_stops_nothing(sqlite_url: str) -> None:
    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    w = EventLogWriter(engine, Metrics(CollectorRegistry()), max_queue_rows=10_000)
    left = [w.submit("rewards", [reward(i)]) for i in range(50)]
    for fut in left:
        fut.cancel()  # as asyncio.wrap_future does when the awaiting call is cancelled
    w.start()
    w.submit("rewards", [reward(50)]).result(timeout=10)
    assert w.running()
    assert len(rows(sqlite_url, "rewards")) == 51  # the rows of those who left are committed too
    w.close()


def test_the_writer_process_commits_with_its_driver_alone(db_url: str, tmp_path: Path) -> None:
    # What the writer process runs for SQLite and PostgreSQL, in a fresh interpreter: no
    # SQLAlchemy there (its import made every start and every replaced writer wait ~0.9 s).
    engine = db.create_engine(db_url)
    db.migrate(engine)
    committer = committer_for(engine, process=True)
    assert isinstance(committer, ProcessCommitter)
    setup = committer._setup
    assert setup.connect is not None
    assert setup.connect.module == ("sqlite3" if db_url.startswith("sqlite") else "psycopg")
    (tmp_path / "setup.pickle").write_bytes(pickle.dumps(setup))
    (tmp_path / "batch.pickle").write_bytes(pickle.dumps({"rewards": [tuple(reward(i)) for i in range(3)]}))
    script = (
        "import pickle, sys\n"
        "from ltrr_server.log.driver import DriverCommitter\n"
        f"setup = pickle.loads(open({str(tmp_path / 'setup.pickle')!r}, 'rb').read())\n"
        f"batch = pickle.loads(open({str(tmp_path / 'batch.pickle')!r}, 'rb').read())\n"
        "c = DriverCommitter(setup.connect, setup.statements)\n"
        "c.open()\n"
        "print(c.commit(batch).kind, c.commit(batch).kind, 'sqlalchemy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    # The second commit repeats the rows: ignored, as a resent batch must be.
    assert out.stdout.split() == ["ok", "ok", "False"], out.stderr
    assert sorted(int(r["reward_id"]) for r in rows(db_url, "rewards")) == [0, 1, 2]
    engine.dispose()


def test_a_driver_it_does_not_know_is_committed_through_sqlalchemy(db_url: str) -> None:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    setup = WriterSetup(engine.url.render_as_string(hide_password=False), statements_for(engine.dialect), None)
    committer = ProcessCommitter(setup)
    committer.start()
    committer.commit({"rewards": [tuple(reward(i)) for i in range(3)]})
    with pytest.raises(WriteRefused):
        committer.commit({"snapshots": [(None, 1, 1, 0, "t", 0.0, 1, b"x")]})
    committer.close()
    assert sorted(int(r["reward_id"]) for r in rows(db_url, "rewards")) == [0, 1, 2]
    engine.dispose()


def test_the_writer_setup_never_shows_the_password() -> None:
    # Nothing connects: the setup is only built, as the server builds it before the child starts.
    committer = committer_for(db.create_engine("postgresql://ltrr:s3cret@127.0.0.1:1/ltrr"), process=True)
    assert isinstance(committer, ProcessCommitter)
    setup = committer._setup
    assert setup.connect is not None and setup.connect.kwargs["password"] == "s3cret"  # noqa: S105
    assert "s3cret" not in repr(setup)
