"""The learner process: it learns off the server's interpreter, and its loss is visible, not fatal."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from typing import Any

import grpc
import pytest

from ltrr.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from ltrr_server.config import Limits
from tests.conftest import ServerThread, server_settings
from tests.helpers import rows, wait_for


def test_learning_runs_in_another_process(server: ServerThread) -> None:
    learner = server.core.learner
    assert learner.alive and learner._process.pid != os.getpid()


def test_the_learner_runs_at_the_configured_niceness(make_server: Any, sqlite_url: str) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url, learner_nice=7))
    pid = server.core.learner._process.pid
    # Relative to the server's own: the learner yields the cores to decisions and acks. Set by
    # the child itself once its imports are done.
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7,
             what="the learner process at niceness +7")


def test_a_dead_learner_is_reported_and_decisions_go_on(make_server: Any, sqlite_url: str) -> None:
    settings = replace(server_settings(sqlite_url), limits=Limits(max_pending_joins=50))
    server: ServerThread = make_server(settings)
    os.kill(server.core.learner._process.pid, signal.SIGKILL)
    wait_for(lambda: server.registry.get_sample_value("ltrr_learner_up") == 0.0, what="ltrr_learner_up 0")
    ch = server.channel()
    dec = decisions_pb2_grpc.DecisionServiceStub(ch)
    fb = feedback_pb2_grpc.FeedbackServiceStub(ch)
    # Far past the pending-joins bound: unlearned joins must not pile up against it.
    for _ in range(200):
        ack = fb.ReportReward(reward_event(dec.Decide(decide_request("demo")).event_id, 1.0))
        assert ack.status == feedback_pb2.REWARD_STATUS_ACCEPTED
    # Logged, to be replayed by the next start.
    wait_for(lambda: len(rows(sqlite_url, "joined")) == 200, what="200 joined rows")
    with pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminServiceStub(ch).SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "learner" in err.value.details()


def test_a_learner_given_nothing_is_stopped_without_a_snapshot_and_without_an_error(
    make_server: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url))
    process = server.core.learner._process
    server.stop()
    assert not process.is_alive()
    # Nothing changed since the start: no shutdown snapshot, and the kill is not reported as a crash.
    assert rows(sqlite_url, "snapshots") == []
    assert "exited unexpectedly" not in caplog.text


def test_a_learner_given_events_still_writes_its_shutdown_snapshot(make_server: Any, sqlite_url: str) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url))
    ch = server.channel()
    dec = decisions_pb2_grpc.DecisionServiceStub(ch)
    fb = feedback_pb2_grpc.FeedbackServiceStub(ch)
    for _ in range(20):
        fb.ReportReward(reward_event(dec.Decide(decide_request("demo")).event_id, 1.0))
    wait_for(lambda: server.core.learner.learned.get("demo", 0) == 20, what="20 events learned")
    server.stop()
    assert [r["trigger"] for r in rows(sqlite_url, "snapshots")] == ["shutdown"]
