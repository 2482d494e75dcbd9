"""Restarts: graceful (snapshot on shutdown) and SIGKILL mid-stream (replay after the snapshot)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltrr.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from tests.conftest import free_port, server_settings
from tests.helpers import child, rows, wait_for

CONFIG = """
[server]
publish_interval_seconds = 0.02
snapshot_interval_seconds = 3600

[[policies]]
name = "demo"
# Softmax: probabilities move with every learned event, so equality after a restart
# shows the model state itself came back, not only its greedy choice.
exploration = "softmax"
softmax_lambda = 3.0
interactions = ["uA"]
join_window_seconds = 60
[[policies.actions]]
id = "news"
[[policies.actions]]
id = "sports"
[[policies.actions]]
id = "music"

[[policies]]
name = "stream"
epsilon = 0.1
join_window_seconds = 60
[[policies.actions]]
id = "a"
[[policies.actions]]
id = "b"
"""

PROBES = [{"user": {"segment": f"s{i}"}} for i in range(6)]


class ServerProcess:
    """`ltrr serve` in a child process, as an operator runs it."""

    def __init__(self, tmp: Path, db_url: str, config: str = CONFIG, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        cfg = tmp / "ltrr.toml"
        cfg.write_text(config)
        self.port = free_port()
        self.log = open(tmp / f"server-{self.port}.log", "w")
        self.proc = child(subprocess.Popen(
            [sys.executable, "-m", "ltrr_client.cli", "serve", "--config", str(cfg), "--db", db_url,
             "--grpc-port", str(self.port), "--metrics-port", "-1", "--host", "127.0.0.1", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=None if env is None else {**os.environ, **env},
        ))
        self.log_path = tmp / f"server-{self.port}.log"
        self.target = f"127.0.0.1:{self.port}"
        channel = grpc.insecure_channel(self.target)
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            assert self.proc.poll() is None, (tmp / f"server-{self.port}.log").read_text()
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_for(serving, timeout=60, what="server health SERVING")
        self.channel = channel

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def probabilities(channel: grpc.Channel, policy: str = "demo") -> list[list[float]]:
    dec = decisions_pb2_grpc.DecisionServiceStub(channel)
    return [[p.probability for p in dec.Decide(decide_request(policy, ctx)).probabilities] for ctx in PROBES]


def flat(probs: list[list[float]]) -> list[float]:
    return [p for row in probs for p in row]


def teach(channel: grpc.Channel, n: int) -> None:
    """Rewards 'music' for even segments and 'news' for odd ones."""
    dec = decisions_pb2_grpc.DecisionServiceStub(channel)
    fb = feedback_pb2_grpc.FeedbackServiceStub(channel)
    events = []
    for i in range(n):
        seg = i % 6
        d = dec.Decide(decide_request("demo", PROBES[seg]))
        good = "music" if seg % 2 == 0 else "news"
        events.append(reward_event(d.event_id, 1.0 if d.chosen_action_id == good else 0.0))
    acks = list(feedback_pb2_grpc.FeedbackServiceStub(channel).StreamRewards(
        iter([feedback_pb2.RewardBatch(events=events[i:i + 100]) for i in range(0, n, 100)])))
    assert all(a.status == feedback_pb2.REWARD_STATUS_ACCEPTED for b in acks for a in b.acks)
    del fb


def learned_all(channel: grpc.Channel, policy: str = "demo") -> bool:
    s = admin_pb2_grpc.AdminServiceStub(channel).GetPolicyStats(admin_pb2.GetPolicyStatsRequest(name=policy))
    return s.learned == s.joined and s.learner_lag_events == 0


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_mid_stream_loses_no_acked_reward_and_restores_the_policy(
    tmp_path: Path, db: str, request: pytest.FixtureRequest
) -> None:
    db_url = f"sqlite:///{tmp_path / 'ltrr.db'}" if db == "sqlite" else request.getfixturevalue("pg_url")
    first = ServerProcess(tmp_path, db_url)
    # A snapshot part-way, then more learning that only a replay can bring back.
    teach(first.channel, 600)
    wait_for(lambda: learned_all(first.channel), what="learner to catch up")
    admin_pb2_grpc.AdminServiceStub(first.channel).SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"))
    teach(first.channel, 600)
    wait_for(lambda: learned_all(first.channel), what="learner to catch up")
    # Two probes agreeing means no publish is in flight.
    before = wait_for(lambda: (lambda a, b: a if a == b else None)(probabilities(first.channel),
                                                                    probabilities(first.channel)))
    assert max(flat(before)) > 0.6, "the policy must have learned something worth restoring"
    version_before = admin_pb2_grpc.AdminServiceStub(first.channel).GetPolicy(
        admin_pb2.GetPolicyRequest(name="demo")).model_version

    # A reward stream on another policy, killed in the middle.
    dec = decisions_pb2_grpc.DecisionServiceStub(first.channel)
    event_ids = [dec.Decide(decide_request("stream")).event_id for _ in range(3000)]
    acked: list[str] = []

    def batches():  # type: ignore[no-untyped-def]
        for i in range(0, len(event_ids), 50):
            yield feedback_pb2.RewardBatch(events=[reward_event(e, 1.0) for e in event_ids[i:i + 50]])
            time.sleep(0.005)  # keeps the stream going well past the kill

    def consume() -> None:
        try:
            for ack_batch in feedback_pb2_grpc.FeedbackServiceStub(first.channel).StreamRewards(batches()):
                acked.extend(a.event_id for a in ack_batch.acks if a.status == feedback_pb2.REWARD_STATUS_ACCEPTED)
        except grpc.RpcError:
            pass  # the server died under us: expected

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: len(acked) >= 500, what="some acks")
    first.kill()
    t.join(10)
    assert 500 <= len(acked) < 3000, "the kill must land mid-stream"

    stored = {r["event_id"] for r in rows(db_url, "rewards")}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged rewards lost"

    second = ServerProcess(tmp_path, db_url)
    after = probabilities(second.channel)
    assert flat(after) == pytest.approx(flat(before), abs=1e-6)
    # No version served before the kill is served again after it.
    assert admin_pb2_grpc.AdminServiceStub(second.channel).GetPolicy(
        admin_pb2.GetPolicyRequest(name="demo")).model_version > version_before
    # Every stored reward is joined after the restart: none were dropped by recovery.
    wait_for(lambda: learned_all(second.channel, "stream"), what="recovered joins learned")
    joined_stream = {r["event_id"] for r in rows(db_url, "joined", "policy = 'stream'")}
    assert set(acked) <= joined_stream
    assert second.terminate() == 0


def test_graceful_stop_snapshots_and_restart_replays_nothing(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ltrr.db'}"
    first = ServerProcess(tmp_path, db_url)
    teach(first.channel, 300)
    wait_for(lambda: learned_all(first.channel), what="learner to catch up")
    before = probabilities(first.channel)
    assert first.terminate() == 0
    snaps = rows(db_url, "snapshots", "trigger = 'shutdown'")
    assert {s["policy"] for s in snaps} == {"demo"}
    assert snaps[0]["last_joined_seq"] == max(r["seq"] for r in rows(db_url, "joined"))
    second = ServerProcess(tmp_path, db_url)
    assert flat(probabilities(second.channel)) == pytest.approx(flat(before), abs=1e-6)
    log_text = Path(second.log.name).read_text()
    assert "policy demo: lineage 1, snapshot" in log_text and "replayed 0 joined events" in log_text
    second.terminate()


def test_in_process_restart_keeps_pending_joins(make_server: object, sqlite_url: str) -> None:
    from tests.conftest import demo_policy

    settings = server_settings(sqlite_url, demo_policy(join_window_seconds=6.0, aggregation="sum"))
    first = make_server(settings)  # type: ignore[operator]
    dec = decisions_pb2_grpc.DecisionServiceStub(first.channel())
    fb = feedback_pb2_grpc.FeedbackServiceStub(first.channel())
    e = dec.Decide(decide_request("demo")).event_id
    assert fb.ReportReward(reward_event(e, 2.0, reward_id="x")).status == feedback_pb2.REWARD_STATUS_ACCEPTED
    first.stop()
    assert rows(sqlite_url, "joined") == []  # the window was still open at the stop
    second = make_server(settings)  # type: ignore[operator]
    fb2 = feedback_pb2_grpc.FeedbackServiceStub(second.channel())
    assert fb2.ReportReward(reward_event(e, 3.0, reward_id="y")).status == feedback_pb2.REWARD_STATUS_ACCEPTED
    assert fb2.ReportReward(reward_event(e, 3.0, reward_id="x")).status == feedback_pb2.REWARD_STATUS_DUPLICATE
    joined = wait_for(lambda: rows(sqlite_url, "joined"), what="join after restart")
    assert (joined[0]["reward"], joined[0]["n_rewards"]) == (5.0, 2)




@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_loses_no_answered_decision(tmp_path: Path, db: str, request: pytest.FixtureRequest) -> None:
    """Decisions answered in a group commit's linger, before their commit, outlive a SIGKILL."""
    db_url = f"sqlite:///{tmp_path / 'ltrr.db'}" if db == "sqlite" else request.getfixturevalue("pg_url")
    # Commits of rows nobody waits for linger a second: a kill right after the answers lands in it.
    config = CONFIG.replace("[server]\n", "[server]\nwrite_idle_linger_seconds = 1.0\n")
    first = ServerProcess(tmp_path, db_url, config)
    dec = decisions_pb2_grpc.DecisionServiceStub(first.channel)
    answered = [dec.Decide(decide_request("stream")).event_id for _ in range(100)]
    answered += [d.event_id for d in dec.DecideStream(iter([decide_request("demo", PROBES[0])] * 100))]
    first.kill()
    logged = {r["event_id"] for r in rows(db_url, "decisions")}
    assert len(set(answered) - logged) > 0, "the kill must come before some commits: the test would show nothing"

    second = ServerProcess(tmp_path, db_url, config)
    logged = {r["event_id"] for r in rows(db_url, "decisions")}
    assert not set(answered) - logged, f"{len(set(answered) - logged)} answered decisions unlogged"
    # And they are the server's again: their rewards are accepted and joined.
    acks = feedback_pb2_grpc.FeedbackServiceStub(second.channel).StreamRewards(
        iter([feedback_pb2.RewardBatch(events=[reward_event(e, 1.0) for e in answered])]))
    assert {a.status for batch in acks for a in batch.acks} == {feedback_pb2.REWARD_STATUS_ACCEPTED}
    assert second.terminate() == 0


def test_a_snapshot_with_nan_weights_is_passed_over_and_not_estimated(make_server: object, db_url: str) -> None:
    # A coin-betting model that learned a number too small for it (before features.COIN_MIN_ABS_VALUE)
    # kept NaN weights, and its snapshots with them: after an upgrade the restart must not serve it.
    import sqlalchemy as sa

    from ltrr_server.features import action_line
    from ltrr_server.log.db import create_engine
    from ltrr_server.policy.model import ModelFrame, PolicyModel
    from tests.conftest import demo_policy
    from tests.helpers import poisoned_coin_model

    # Joined at each first reward (teach() sends them all after its decisions): a window that
    # closes sooner would join them with the default reward first, and theirs would be late.
    spec = demo_policy(exploration="squarecb", interactions=("::", "::A"), optimizer="coin", join_window_seconds=60)
    settings = server_settings(db_url, spec)
    first = make_server(settings)  # type: ignore[operator]
    teach(first.channel(), 300)
    wait_for(lambda: learned_all(first.channel()) and len(rows(db_url, "joined")) == 300, timeout=30,
             what="every decision joined and learned")
    admin = admin_pb2_grpc.AdminServiceStub(first.channel())
    snap = admin.SnapshotPolicy(admin_pb2.SnapshotPolicyRequest(name="demo"), timeout=60)
    first.stop()
    lines = [action_line(a.id, a.features) for a in spec.actions]
    poisoned = poisoned_coin_model(spec, "shared |user segment=s0", lines)
    probe = {"user": {"segment": "s0", "x": 0.5}}
    assert not any(math.isfinite(p) for p in PolicyModel.from_bytes(poisoned, ModelFrame("cb", "mtr")).predict_one(
        "shared |user segment=s0 x:0.5", lines)[0])
    engine = create_engine(db_url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("UPDATE snapshots SET model = :m"), {"m": poisoned}).rowcount >= 1
    engine.dispose()

    second = make_server(settings)  # type: ignore[operator]
    dec = decisions_pb2_grpc.DecisionServiceStub(second.channel())
    for ctx in (probe, PROBES[0]):
        probs = {p.action_id: p.probability for p in dec.Decide(decide_request("demo", ctx)).probabilities}
        assert all(math.isfinite(p) for p in probs.values()), probs
    # The lineage was learned again from its events: music, rewarded for s0, is its greedy choice.
    assert max(probs, key=probs.get) == "music"  # type: ignore[arg-type]
    # Evaluated as a target, the snapshot says why it has no estimate; the other targets have theirs.
    admin = admin_pb2_grpc.AdminServiceStub(second.channel())
    result = list(admin.EvaluatePolicy(admin_pb2.EvaluatePolicyRequest(name="demo", targets=[
        admin_pb2.EvaluationTarget(snapshot_id=snap.snapshot_id), admin_pb2.EvaluationTarget(uniform=True)]),
        timeout=120))[-1].result
    bad, uniform = result.targets
    assert "NaN or infinite" in bad.problem and not bad.slots
    assert not uniform.problem and 0 < uniform.slots[0].snips.value < 1
