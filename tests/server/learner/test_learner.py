"""The learner process: it learns off the server's interpreter, and its loss is visible, not fatal."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltrr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    decisions_pb2,
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
)
from ltrr_client.client import decide_request, reward_event
from ltrr_server.policy.model import ModelFrame, PolicyModel
from tests.conftest import ServerThread, server_settings
from tests.helpers import dsjson_line, rows, taught_from_log, wait_for


def test_learning_runs_in_another_process(server: ServerThread) -> None:
    learner = server.core.learner
    assert learner.alive and learner.pid != os.getpid()


def test_the_learner_runs_at_the_configured_niceness(make_server: Any, sqlite_url: str) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url, learner_nice=7))
    pid = server.core.learner.pid
    # Relative to the server's own: the learner yields the cores to decisions and acks. Set by
    # the child itself once its imports are done.
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7,
             what="the learner process at niceness +7")


def _decide_and_reward(ch: grpc.Channel, n: int) -> None:
    dec = decisions_pb2_grpc.DecisionServiceStub(ch)
    fb = feedback_pb2_grpc.FeedbackServiceStub(ch)
    for i in range(n):
        d = dec.Decide(decide_request("demo", context={"user": {"segment": f"s{i % 3}"}}))
        ack = fb.ReportReward(reward_event(d.event_id, 1.0 if d.chosen_action_id == "music" else 0.0))
        assert ack.status == feedback_pb2.REWARD_STATUS_ACCEPTED


def test_a_killed_learner_is_back_within_5s_and_learns_every_event_exactly_once(
    make_server: Any, db_url: str
) -> None:
    server: ServerThread = make_server(server_settings(db_url))
    ch = server.channel()
    admin = admin_pb2_grpc.AdminServiceStub(ch)
    _decide_and_reward(ch, 150)
    wait_for(lambda: server.core.learner.learned.get("demo", 0) == 150, what="150 events learned")
    version_before = admin.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).model_version
    first = server.core.learner.pid
    os.kill(first, signal.SIGKILL)
    started = time.monotonic()
    # Rewards keep being acknowledged while it is down and while it is rebuilt.
    _decide_and_reward(ch, 100)
    wait_for(lambda: server.core.learner.pid not in (None, first) and server.core.learner.alive, timeout=5,
             what="a new learner process within 5 s")
    assert time.monotonic() - started < 5
    wait_for(lambda: server.registry.get_sample_value("ltrr_component_up", {"component": "learner"}) == 1.0,
             what="ltrr_component_up{component=learner} back to 1")
    assert server.registry.get_sample_value("ltrr_component_restarts_total", {"component": "learner"}) == 1.0
    _decide_and_reward(ch, 100)
    wait_for(lambda: server.core.learner.backlog("demo") == 0 and server.core.learner.learned.get("demo") == 350,
             what="every joined event learned")
    assert admin.GetPolicy(admin_pb2.GetPolicyRequest(name="demo")).model_version >= version_before
    # Exactly once, in log order: the learner's model is byte for byte a fresh model taught every
    # joined event of the log once.
    admin.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"))
    # The replacement snapshotted what it rebuilt ("restore"), then the admin's call all of it.
    restore, snapshot = sorted(rows(db_url, "snapshots"), key=lambda r: r["id"])
    assert restore["trigger"] == "restore" and 150 <= restore["last_joined_seq"] <= 250
    assert snapshot["last_joined_seq"] == 350
    assert taught_from_log(db_url, server.core.policies.get("demo").spec) == (snapshot["model"], 350)


def test_a_learner_killed_right_after_a_start_keeps_what_the_start_replayed(make_server: Any, sqlite_url: str) -> None:
    # A replaced learner rebuilds up to the last joined event handed over, which counted only
    # the joins made since the start: killed before the first one, it rebuilt every policy
    # from its snapshot alone, and what the start had replayed from the log was lost for good
    # (the next snapshot skipped past it).
    settings = server_settings(sqlite_url)
    first: ServerThread = make_server(settings)
    _decide_and_reward(first.channel(), 150)
    wait_for(lambda: first.core.learner.learned.get("demo", 0) == 150, what="150 events learned")
    first.core.learner._current.expected_exit = True  # a stop with no final snapshot, as after a kill
    os.kill(first.core.learner.pid, signal.SIGKILL)
    first.stop()
    assert rows(sqlite_url, "snapshots") == []

    second: ServerThread = make_server(settings)
    learner = second.core.learner
    started = learner.pid
    os.kill(started, signal.SIGKILL)
    wait_for(lambda: learner.pid not in (None, started) and learner.alive, timeout=10, what="its replacement")
    admin = admin_pb2_grpc.AdminServiceStub(second.channel())
    admin.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"), timeout=30)
    snapshot = max(rows(sqlite_url, "snapshots"), key=lambda r: r["id"])
    assert snapshot["last_joined_seq"] == 150
    assert taught_from_log(sqlite_url, second.core.policies.get("demo").spec) == (snapshot["model"], 150)


def test_a_learner_that_keeps_dying_holds_the_feedback_service_down_and_comes_back(
    make_server: Any, sqlite_url: str
) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url))
    health = health_pb2_grpc.HealthStub(server.channel())
    feedback = health_pb2.HealthCheckRequest(service="ltrr.v1.FeedbackService")
    assert health.Check(feedback).status == health_pb2.HealthCheckResponse.SERVING
    server.core.learner._db_url = "sqlite:////nonexistent/dir/ltrr.db"  # its replacements cannot read the log
    os.kill(server.core.learner.pid, signal.SIGKILL)
    wait_for(lambda: health.Check(feedback).status == health_pb2.HealthCheckResponse.NOT_SERVING,
             what="FeedbackService NOT_SERVING")
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    wait_for(lambda: (server.registry.get_sample_value("ltrr_component_restarts_total",
                                                       {"component": "learner"}) or 0) >= 2,
             what="restarts with backoff")
    server.core.learner._db_url = sqlite_url
    wait_for(lambda: health.Check(feedback).status == health_pb2.HealthCheckResponse.SERVING, timeout=15,
             what="FeedbackService SERVING again")
    _decide_and_reward(server.channel(), 10)
    wait_for(lambda: server.core.learner.learned.get("demo", 0) == 10, what="learning again")


def test_a_learner_given_nothing_is_stopped_without_a_snapshot_and_without_an_error(
    make_server: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server: ServerThread = make_server(server_settings(sqlite_url))
    pid = server.core.learner.pid
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
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


def test_a_model_with_nan_weights_is_never_served_nor_snapshotted(make_server: Any, sqlite_url: str) -> None:
    # However it got them (here: VW itself, as a coin-betting model that learned a number too small
    # for it before features.COIN_MIN_ABS_VALUE): no NaN reaches a caller, the log or a new lineage.
    import dataclasses

    from ltrr_server.errors import FailedPrecondition
    from ltrr_server.features import action_line
    from ltrr_server.learner.state import LearnerState
    from tests.conftest import demo_policy
    from tests.helpers import poisoned_coin_model

    spec = demo_policy(exploration="squarecb", interactions=("::", "::A"), optimizer="coin")
    server: ServerThread = make_server(server_settings(sqlite_url, spec))
    lines = [action_line(a.id, a.features) for a in spec.actions]
    changed = dataclasses.replace(spec, squarecb_gamma_scale=30.0)  # a new lineage: it takes a warm start
    with pytest.raises(FailedPrecondition, match="warm start of policy 'demo' has NaN or infinite weights"):
        server.call(server.core.policies.update("demo", lambda live: changed, warm_start=poisoned_coin_model(
            changed, "shared |user segment=s0", lines)))
    rt = server.core.policies.get("demo")
    assert (rt.spec, rt.lineage) == (spec, 1) and rows(sqlite_url, "snapshots") == []

    # Such a model in the decision path (placed there as a publish would) answers no NaN...
    poisoned = poisoned_coin_model(spec, "shared |user segment=s0", lines)
    rt.serving = PolicyModel.from_bytes(poisoned, ModelFrame.of(spec))
    ch = server.channel()
    with pytest.raises(grpc.RpcError) as err:
        decisions_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("demo", {"user": {"segment": "s0", "x": 0.5}}))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "policy 'demo' cannot decide: its model gave NaN or infinite probabilities" in (err.value.details() or "")
    assert rows(sqlite_url, "decisions") == []
    # ... and in the learner process it is neither published nor snapshotted, and it says so.
    poisoned_model = PolicyModel.from_bytes(poisoned, ModelFrame.of(spec))
    server.core.learner.set_state(LearnerState("demo", rt.lineage, poisoned_model, 0, 0))
    wait_for(lambda: server.registry.get_sample_value("ltrr_models_rejected_total", {"policy": "demo"}) == 1.0,
             what="ltrr_models_rejected_total{policy=demo} at 1 (its first publish)")
    with pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminServiceStub(ch).SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy 'demo' has no finite model to snapshot" in (err.value.details() or "")
    assert rows(sqlite_url, "snapshots") == []
    assert server.registry.get_sample_value("ltrr_models_rejected_total", {"policy": "demo"}) == 2.0


@pytest.mark.parametrize("learner", ["lagging", "killed and rebuilding", "in a large batch"])
def test_a_stop_leaves_a_learning_backlog_to_the_next_start(make_server: Any, sqlite_url: str, learner: str) -> None:
    # 1,000 imported decisions with contexts of 900 numbers, crossed with themselves by the
    # default interactions, are ~20 s of learning. A stop used to learn all of it first: with
    # 3,000 (`ltrr serve`, SIGTERM) it took 63 s and then killed the learner, long after docker
    # (10 s) or the Helm chart (30 s) would have killed the server before it saved its rankers
    # and committed the log's last rows. Now it snapshots what was learned and stops; the next
    # start learns the rest from the log. A learner killed meanwhile is replaced by one that
    # rebuilds from the log before it reads anything: a stop waited for that too (37 s with
    # 3,000), and now ends it, leaving the rebuilding to the next start. A client importing
    # batches of 300 such lines (3.3 MB; the server takes 4 MiB) hands the learner 300 at a time,
    # about 6 s each: a stop waited for the one at hand and the one queued behind it (8 s), and
    # now leaves them too.
    from ltrr_server.config import PolicySpec
    from tests.conftest import demo_policy

    settings = server_settings(sqlite_url, demo_policy(), PolicySpec(name="wide", exploration="epsilon", epsilon=0.1))
    fresh = time.monotonic()
    server: ServerThread = make_server(settings)
    first_start = time.monotonic() - fresh  # the ceiling of the start below: a start with nothing to replay
    lines = [dsjson_line(i, f"wide{i}", numbers=900) for i in range(1000)]
    admin = admin_pb2_grpc.AdminServiceStub(server.channel())
    size = 300 if learner == "in a large batch" else 100
    results = list(admin.ImportEvents(admin_pb2.ImportBatch(policy="wide", lines=lines[i:i + size], first_line=i + 1)
                                      for i in range(0, 1000, size)))
    assert sum(r.imported for r in results) == 1000
    assert server.core.learner.backlog("wide") > 300  # learning lags far behind
    if learner == "killed and rebuilding":
        first = server.core.learner.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: server.core.learner.pid not in (None, first), what="its replacement, rebuilding from the log")

    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < (4 if learner == "in a large batch" else 10)
    snapshots = rows(sqlite_url, "snapshots", "policy = 'wide'")
    last = max(r["seq"] for r in rows(sqlite_url, "joined", "policy = 'wide'"))
    if learner != "killed and rebuilding":
        [final] = snapshots
        assert final["trigger"] == "shutdown" and final["last_joined_seq"] < last
    else:
        assert snapshots == []  # what it was rebuilding is the snapshots and the log already

    # The next start serves within seconds: it replayed the whole backlog first until 2026-12-01
    # (21-22 s here, the Decide below waiting behind it). The learner process replays what a
    # start's 2 s left, then publishes and snapshots it.
    left = last - (snapshots[0]["last_joined_seq"] if snapshots else 0)
    started = time.monotonic()
    again: ServerThread = make_server(settings)
    chosen = decisions_pb2_grpc.DecisionServiceStub(again.channel()).Decide(
        decisions_pb2.DecideRequest(policy="wide", actions=[common_pb2.Action(id="a"), common_pb2.Action(id="b")]),
        timeout=30)
    took = time.monotonic() - started
    print(f"{left} events left; the next start answered a Decide after {took:.1f} s "
          f"(a start on an empty log: {first_start:.1f} s)")
    assert chosen.chosen_action_id in ("a", "b") and took < 6
    # What is left to replay is in its lag meanwhile, as the dashboard shows it.
    assert again.core.learner.backlog("wide") > 0
    restored = wait_for(lambda: [r for r in rows(sqlite_url, "snapshots", "policy = 'wide'")
                                 if r["trigger"] == "restore"],
                        timeout=120, what="the learner process's replay of the rest, snapshotted")
    assert restored[0]["last_joined_seq"] == last  # every event left at the stop learned
