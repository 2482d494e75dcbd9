"""Faults a search frontend meets on its first day: callers that give up, parts that die, a database
that drops. None of them may stop the write path, lose an acknowledged reward or an answered
decision, or leave health saying SERVING for a service that cannot do its job."""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltrr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    decisions_pb2,
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    retrieval_pb2_grpc,
)
from ltrr_client.client import decide_request, retrieve_request, reward_event
from tests.conftest import PG_URL, ServerThread, retrieval_server_settings, server_settings
from tests.helpers import TcpProxy, rows, wait_for

ACCEPTED = feedback_pb2.REWARD_STATUS_ACCEPTED
FEEDBACK = "ltrr.v1.FeedbackService"


def _status(server: ServerThread, service: str = "") -> int:
    with server.channel() as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                        timeout=5).status)


def _restarts(server: ServerThread) -> dict[str, float]:
    return {part: server.registry.get_sample_value("ltrr_component_restarts_total", {"component": part}) or 0.0
            for part in ("writer", "writer_process", "learner", "joins")}


def _rewarded_decisions(server: ServerThread, n: int, timeout: float = 10.0) -> list[str]:
    """``n`` decisions, each rewarded and acknowledged within ``timeout``: the write path works."""
    with server.channel() as ch:
        dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
        ids = []
        for _ in range(n):
            event_id = dec.Decide(decide_request("demo"), timeout=timeout).event_id
            assert fb.ReportReward(reward_event(event_id, 1.0), timeout=timeout).status == ACCEPTED
            ids.append(event_id)
        return ids


async def _give_up_on_everything(target: str, event_ids: list[str]) -> set[str]:
    """Every RPC, called with deadlines too short to meet and cancelled mid-flight; streams
    cancelled, and streams whose answers are never read. Returns the decisions that were answered."""
    answered: set[str] = set()
    async with grpc.aio.insecure_channel(target) as ch:
        dec = decisions_pb2_grpc.DecisionServiceStub(ch)
        fb = feedback_pb2_grpc.FeedbackServiceStub(ch)
        ret = retrieval_pb2_grpc.RetrievalServiceStub(ch)
        models = models_pb2_grpc.ModelServiceStub(ch)
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        rewards = iter(event_ids)
        calls: list[tuple[Any, Any]] = [
            (dec.Decide, lambda: decide_request("demo")),
            (fb.ReportReward, lambda: reward_event(next(rewards), 1.0)),
            (ret.Retrieve, lambda: retrieve_request("retrieval", "mellow jazz")),
            (models.RecordQuery, lambda: models_pb2.RecordQueryRequest(session_id="s", query="jazz")),
            (models.Autocomplete, lambda: models_pb2.AutocompleteRequest(model="none", prefix="ja")),
            (models.XmrPredict, lambda: models_pb2.XmrPredictRequest(model="none", queries=["jazz"])),
            (models.ListModels, lambda: models_pb2.ListModelsRequest()),
            (admin.GetPolicyStats, lambda: admin_pb2.GetPolicyStatsRequest(name="demo")),
            (admin.SnapshotPolicy, lambda: admin_pb2.SnapshotPolicyRequest(name="demo")),
            (admin.ListPolicies, lambda: admin_pb2.ListPoliciesRequest()),
        ]

        async def settle(call: Any) -> None:
            try:
                resp = await call
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                return
            if isinstance(resp, decisions_pb2.DecideResponse):
                answered.add(resp.event_id)

        async def cancelled(method: Any, request: Any, after: float) -> None:
            call = method(request)
            await asyncio.sleep(after)
            call.cancel()
            await settle(call)

        rng = random.Random(7)
        jobs = []
        for method, request in calls:
            for _ in range(20):
                jobs.append(settle(method(request(), timeout=rng.uniform(0.001, 0.01))))
                jobs.append(cancelled(method, request(), rng.uniform(0, 0.004)))
        # Rewards above all: their handlers wait for a commit, which the callers then leave.
        for _ in range(200):
            jobs.append(settle(fb.ReportReward(reward_event(next(rewards), 1.0), timeout=rng.uniform(0.001, 0.01))))
        await asyncio.gather(*jobs)

        # Streams: cancelled after their first answer, and streams whose answers nobody reads.
        for _ in range(5):
            stream = dec.DecideStream(iter([decide_request("demo")] * 50))
            async for resp in stream:
                answered.add(resp.event_id)
                break
            stream.cancel()
            batches = [feedback_pb2.RewardBatch(events=[reward_event(next(rewards), 1.0) for _ in range(5)])
                       for _ in range(4)]
            unread = fb.StreamRewards(iter(batches))
            await asyncio.sleep(0.01)
            unread.cancel()
    return answered


def test_callers_that_give_up_on_every_rpc_never_stop_the_write_path(db_url: str, tmp_path: Path) -> None:
    server = ServerThread(retrieval_server_settings(db_url, tmp_path / "data"))
    try:
        event_ids = _decisions(server, 600)
        answered = asyncio.run(_give_up_on_everything(server.target, event_ids))
        # The write path still works: every new reward is committed and acknowledged at once.
        acked = _rewarded_decisions(server, 50, timeout=5)
        assert set(acked) <= {r["event_id"] for r in rows(db_url, "rewards")}
        assert _status(server) == health_pb2.HealthCheckResponse.SERVING
        assert _restarts(server) == {"writer": 0.0, "writer_process": 0.0, "learner": 0.0, "joins": 0.0}
        # Every decision answered, to callers that stayed or not, is in the log; and the stats agree.
        wait_for(lambda: answered <= {r["event_id"] for r in rows(db_url, "decisions")}, timeout=10,
                 what="every answered decision logged")
        with server.channel() as ch:
            stats = admin_pb2_grpc.AdminServiceStub(ch).GetPolicyStats(admin_pb2.GetPolicyStatsRequest(name="demo"))
        wait_for(lambda: len(rows(db_url, "decisions", "policy = 'demo'")) == stats.decisions, timeout=10,
                 what="the decisions the stats count, all logged")
    finally:
        server.stop()


def _decisions(server: ServerThread, n: int) -> list[str]:
    with server.channel() as ch:
        dec = decisions_pb2_grpc.DecisionServiceStub(ch)
        return [dec.Decide(decide_request("demo")).event_id for _ in range(n)]



class _Traffic:
    """Decisions and rewards from a thread until stopped, recording what was answered and acked."""

    def __init__(self, server: ServerThread, deadline: float = 2.0) -> None:
        self.answered: list[str] = []
        self.acked: list[str] = []
        self.errors: dict[str, int] = {}
        self._server, self._deadline = server, deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._server.channel() as ch:
            dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
            while not self._stop.is_set():
                try:
                    event_id = dec.Decide(decide_request("demo"), timeout=self._deadline).event_id
                    self.answered.append(event_id)
                    if fb.ReportReward(reward_event(event_id, 1.0), timeout=self._deadline).status == ACCEPTED:
                        self.acked.append(event_id)
                except grpc.RpcError as err:
                    self.errors[err.code().name] = self.errors.get(err.code().name, 0) + 1
                    time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class _Stream:
    """One StreamRewards call kept open, fed a batch of fresh decisions' rewards at a time."""

    def __init__(self, server: ServerThread) -> None:
        self.answered: list[str] = []
        self.acked: list[str] = []
        self.other: list[str] = []
        self.error = ""
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _batches(self, dec: Any) -> Any:
        while not self._stop.is_set():
            ids = [dec.Decide(decide_request("demo"), timeout=30).event_id for _ in range(10)]
            self.answered += ids
            yield feedback_pb2.RewardBatch(events=[reward_event(e, 1.0) for e in ids])
            time.sleep(0.05)

    def _run(self) -> None:
        with self._server.channel() as ch:
            dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
            try:
                for batch in fb.StreamRewards(self._batches(dec)):
                    self.acked += [a.event_id for a in batch.acks if a.status == ACCEPTED]
                    self.other += [a.message for a in batch.acks if a.status != ACCEPTED]
            except grpc.RpcError as err:
                self.error = f"{err.code().name}: {err.details()}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture
def pg_proxy(pg_url: str) -> tuple[TcpProxy, str]:
    """A proxy in front of the test's PostgreSQL server, and the test database's URL through it."""
    host_port = PG_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    return proxy, pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")


@pytest.mark.postgres
def test_postgres_dropping_mid_stream_loses_nothing_and_acks_resume_by_themselves(
    make_server: Any, pg_url: str, pg_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, through_proxy = pg_proxy
    server: ServerThread = make_server(server_settings(through_proxy, commit_stall_seconds=1.0))
    traffic = _Traffic(server, deadline=0.5)  # callers with deadlines give up during the outage
    stream = _Stream(server)  # and a stream that stays open through it
    # (Server, proxy and clients share this process's interpreter lock: a few acks a second is plenty.)
    wait_for(lambda: len(traffic.acked) >= 10 and len(stream.acked) >= 50, timeout=30, what="acks before the outage")
    proxy.down()
    wait_for(lambda: _status(server, FEEDBACK) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10,
             what="FeedbackService NOT_SERVING while nothing commits")
    acked_in_outage = len(traffic.acked)
    time.sleep(2.0)
    assert len(traffic.acked) - acked_in_outage <= 1, "acknowledged while the database was away"
    proxy.up()
    streamed = len(stream.acked)
    wait_for(lambda: len(traffic.acked) >= acked_in_outage + 5 and len(stream.acked) >= streamed + 50,
             timeout=30, what="acks after the outage, on the stream too")
    wait_for(lambda: _status(server, FEEDBACK) == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")
    traffic.stop()
    stream.stop()
    assert traffic.errors.get("DEADLINE_EXCEEDED", 0) > 0, "callers must have given up during the outage"
    # Nothing acknowledged is lost; every answered decision is logged; nothing had to be restarted.
    stored = {r["event_id"] for r in rows(pg_url, "rewards")}
    assert set(traffic.acked) <= stored and set(stream.acked) <= stored
    assert not stream.error and not stream.other, "the stream must have gone on, every event accepted"
    answered = set(traffic.answered) | set(stream.answered)
    wait_for(lambda: answered <= {r["event_id"] for r in rows(pg_url, "decisions")}, timeout=15,
             what="every answered decision logged")
    assert _restarts(server)["writer"] == 0.0
    assert server.registry.get_sample_value("ltrr_db_write_errors_total") >= 1
    # And a stop with the database away takes its bounded time, not minutes.
    proxy.down()
    _decisions(server, 5)  # rows that can no longer be committed
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 15
    proxy.up()


def test_a_killed_writer_process_is_replaced_at_once_and_loses_nothing(make_server: Any, db_url: str) -> None:
    server: ServerThread = make_server(server_settings(db_url))
    traffic = _Traffic(server)
    wait_for(lambda: len(traffic.acked) >= 50, what="some acks")
    committer = server.core.writer._committer
    first = committer._process.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: committer._process is not None and committer._process.pid != first
             and committer._process.poll() is None, timeout=5, what="a new writer process within 5 s")
    acked = len(traffic.acked)
    wait_for(lambda: len(traffic.acked) >= acked + 50, what="acks after the kill")
    traffic.stop()
    assert set(traffic.acked) <= {r["event_id"] for r in rows(db_url, "rewards")}
    wait_for(lambda: set(traffic.answered) <= {r["event_id"] for r in rows(db_url, "decisions")},
             what="every answered decision logged")
    assert _restarts(server)["writer_process"] >= 1 or server.registry.get_sample_value(
        "ltrr_db_write_errors_total") >= 1  # replaced by the supervisor, or by the commit that found it gone
    wait_for(lambda: server.registry.get_sample_value("ltrr_component_up", {"component": "writer_process"}) == 1.0,
             what="writer_process up")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the fault injected
def test_a_writer_thread_that_dies_is_restarted_and_its_queue_committed(make_server: Any, sqlite_url: str) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url))
    _rewarded_decisions(server, 5)
    writer = server.core.writer
    thread = writer._thread
    # Idle first: a fault landing inside a group commit is caught there by design (the write
    # path goes on), and a commit of the joins above could still be running on a busy machine.
    wait_for(lambda: writer._queued_rows == 0 and writer._committing_since == 0.0, what="the writer idle")
    time.sleep(0.2)
    # A fault inside the writer thread itself (not a database error): it ends the thread.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    _decisions(server, 1)  # wakes it: it dies on its next Python instruction
    wait_for(lambda: writer._thread is not thread and writer._thread.is_alive(), timeout=5,
             what="the writer thread restarted")
    assert _restarts(server)["writer"] == 1.0
    acked = _rewarded_decisions(server, 20, timeout=5)
    assert set(acked) <= {r["event_id"] for r in rows(sqlite_url, "rewards")}


def test_model_version_never_goes_back_after_a_restart(make_server: Any, sqlite_url: str) -> None:
    settings = server_settings(sqlite_url)  # no scheduled snapshot in the test's time
    first: ServerThread = make_server(settings)
    _rewarded_decisions(first, 30)
    with first.channel() as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        admin.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"))
        for _ in range(5):  # published versions after the snapshot, each with events of its own
            _rewarded_decisions(first, 10)
            time.sleep(0.1)
        wait_for(lambda: first.core.learner.backlog("demo") == 0, what="learned")
        time.sleep(0.1)
        before = admin.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).model_version
    # A stop that writes no final snapshot (as after a kill): the restart replays the log.
    first.core.learner._current.expected_exit = True
    os.kill(first.core.learner.pid, signal.SIGKILL)
    first.stop()
    assert [r["trigger"] for r in rows(sqlite_url, "snapshots")] == ["admin"]
    second: ServerThread = make_server(settings)
    with second.channel() as ch:
        after = admin_pb2_grpc.AdminServiceStub(ch).GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).model_version
    assert after > before


@pytest.mark.postgres
def test_a_database_that_hangs_is_given_up_on_and_commits_resume_when_it_answers(
    make_server: Any, pg_url: str, pg_proxy: tuple[TcpProxy, str]
) -> None:
    proxy, through_proxy = pg_proxy
    server: ServerThread = make_server(server_settings(through_proxy, commit_timeout_seconds=1.0))
    traffic = _Traffic(server, deadline=0.5)
    wait_for(lambda: len(traffic.acked) >= 30, what="acks before the hang")
    first = server.core.writer._committer._process.pid
    proxy.freeze()  # connections stay open; nothing comes back
    wait_for(lambda: server.core.writer._committer._process is None
             or server.core.writer._committer._process.pid != first, timeout=10,
             what="the hung writer process replaced")
    acked = len(traffic.acked)
    proxy.thaw()
    wait_for(lambda: len(traffic.acked) >= acked + 30, timeout=30, what="acks after the database answers again")
    traffic.stop()
    assert set(traffic.acked) <= {r["event_id"] for r in rows(pg_url, "rewards")}
