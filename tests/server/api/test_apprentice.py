"""Apprentice mode: Decide serves the caller's baseline, the policy learns from its rewards and
says how often it agrees; one UpdatePolicy switches it online with what it learned."""

from __future__ import annotations

import json
import random
import urllib.request

import grpc
import pytest

from ltrr.v1 import admin_pb2, common_pb2, decisions_pb2
from ltrr_client.client import LtrrClient, decide_request, reward_event
from tests.conftest import ServerThread
from tests.helpers import rows, wait_for

# The caller's own logic: a for segment x, b for segment y; rewarded 0.8 and 0.9 there, others 0.2.
BASELINE = {"x": "a", "y": "b"}


def spec(**kw: object) -> admin_pb2.PolicySpec:
    fields: dict[str, object] = dict(name="app", mode=admin_pb2.POLICY_MODE_APPRENTICE, join_window_seconds=60,
                                     learning_rate=0.25,
                                     actions=[common_pb2.Action(id=a) for a in ("a", "b", "c")])
    return admin_pb2.PolicySpec(**(fields | kw))  # type: ignore[arg-type]


def test_apprentice_serves_the_baseline_learns_and_switches_online(server: ServerThread) -> None:
    rng = random.Random(3)
    with LtrrClient(server.target) as c:
        c.create_policy(spec())
        events = []
        for i in range(300):
            seg = "xy"[i % 2]
            resp = c.decisions.Decide(_request(seg, BASELINE[seg]))
            assert resp.chosen_action_id == BASELINE[seg] and resp.probability == 1.0
            events.append(reward_event(resp.event_id, float(rng.random() < (0.8 if seg == "x" else 0.9))))
        list(c.stream_rewards([events]))
        wait_for(lambda: c.stats("app").learned >= 300, timeout=30, what="the baseline's rewards learned")
        # Untrained, its greedy choice was the first action: it agreed on segment x only.
        assert c.stats("app").greedy_share == pytest.approx(0.5)
        # Serving its baseline at probability 1 is no exploration, whatever it would have chosen:
        # until 2026-12-01 its disagreement (0.5 here) was shown as its exploration share.
        assert c.stats("app").exploration_share == 0.0
        with urllib.request.urlopen(server.metrics_url, timeout=5) as r:  # noqa: S310 - a local test server
            text = r.read().decode()
        assert 'ltrr_explored_decisions_total{policy="app"} 0.0' in text
        assert 'ltrr_greedy_decisions_total{policy="app"} 150.0' in text  # the dashboard's agreement
        assert 'ltrr_decisions_total{policy="app"} 300.0' in text
        # It learned the baseline's value where it was shown, and now agrees with it.
        later = [c.decisions.Decide(_request(seg, BASELINE[seg])).event_id for seg in "xy" * 50]
        list(c.stream_rewards([[reward_event(e, 1.0) for e in later]]))
        wait_for(lambda: c.stats("app").joined >= 400, timeout=30, what="joins")
        disagreed = [d["explored"] for d in rows(server.settings.db_url, "decisions", "policy = 'app'")
                     if d["event_id"] in set(later)]
        assert len(disagreed) == 100 and sum(disagreed) <= 5
        stats = c.stats("app")
        assert stats.greedy_share > 0.6 and stats.greedy_mean_reward > stats.mean_reward - 0.1, stats
        logged = rows(server.settings.db_url, "decisions", "policy = 'app'")
        assert all(max(json.loads(d["probabilities"])[0]) == 1.0 for d in logged)
        # The first action is the baseline when a request names none.
        assert c.decisions.Decide(decide_request("app", {"u": {"seg": "y"}})).chosen_action_id == "a"

        # One UpdatePolicy naming the mode alone: the actions, the learning rate and the model stay.
        switched = c.update_policy(admin_pb2.PolicySpec(name="app", mode=admin_pb2.POLICY_MODE_ONLINE))
        assert not switched.model_reset and switched.policy.lineage == 1
        assert switched.policy.spec.learning_rate == 0.25 and len(switched.policy.spec.actions) == 3
        picks = [c.decisions.Decide(_request("x", "")) for _ in range(60)]
        assert any(p.probability < 1.0 for p in picks)  # drawn from the policy now
        assert sum(p.chosen_action_id == "a" for p in picks) > 40  # what it learned as an apprentice


def _request(seg: str, baseline: str) -> decisions_pb2.DecideRequest:
    return decide_request("app", {"u": {"seg": seg}}, baseline=baseline)


def test_bad_baselines_and_modes_name_the_field(server: ServerThread) -> None:
    with LtrrClient(server.target) as c:
        c.create_policy(spec())
        with pytest.raises(grpc.RpcError) as err:
            c.decisions.Decide(_request("x", "zzz"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "baseline_action_id: 'zzz' is not one of" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            c.create_policy(spec(name="rows", kind=admin_pb2.POLICY_KIND_CCB, slots=2))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.mode" in err.value.details()
