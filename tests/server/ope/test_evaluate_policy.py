"""EvaluatePolicy through a real server: the figures equal the formulas over the logged rows, the
intervals cover the truth of a known world, bad requests name their field, callers that leave
stop their evaluation, and a dead evaluation process fails its call."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from ltrr.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from ltrr_client.client import LtrrClient, reward_event
from ltrr_client.evaluation import describe, evaluation_table
from tests.conftest import ServerThread, server_settings
from tests.helpers import rows, wait_for

# The world: the mean reward of each action per user segment.
MEANS = {"x": {"a": 0.8, "b": 0.2, "c": 0.5}, "y": {"a": 0.1, "b": 0.9, "c": 0.5}}
SEGMENTS = ("x", "y")


def spec(name: str = "ev", **kw: Any) -> admin_pb2.PolicySpec:
    fields: dict[str, Any] = dict(
        name=name, exploration=admin_pb2.EXPLORATION_EPSILON, epsilon=0.5, join_window_seconds=60,
        actions=[common_pb2.Action(id=a) for a in ("a", "b", "c")])
    return admin_pb2.PolicySpec(**(fields | kw))


def log_traffic(server: ServerThread, n: int, seed: int = 7, policy: str = "ev") -> None:
    """``n`` decisions of ``policy`` with Bernoulli rewards from MEANS, every one joined."""
    rng = random.Random(seed)
    with LtrrClient(server.target) as client:
        events = []
        for i in range(n):
            seg = SEGMENTS[i % 2]
            resp = client.decide(policy, {"u": {"seg": seg}})
            chosen = resp.chosen_action_id
            events.append(reward_event(resp.event_id, float(rng.random() < MEANS[seg][chosen])))
        for _ in client.stream_rewards([events[i:i + 500] for i in range(0, n, 500)]):
            pass
    wait_for(lambda: len(rows(server.settings.db_url, "joined", "policy = :p", p=policy)) >= n, timeout=30,
             what="every decision joined")
    # And learned by the model that serves (the "live" target): on a busy machine the learner can
    # be behind the joins.
    with LtrrClient(server.target) as client:
        wait_for(lambda: (s := client.stats(policy)).learned >= n and s.learner_lag_events == 0, timeout=30,
                 what="every joined decision learned")


def evaluate(server: ServerThread, **request: Any) -> tuple[list[admin_pb2.EvaluatePolicyUpdate], Any]:
    stub = admin_pb2_grpc.AdminServiceStub(server.channel())
    updates = list(stub.EvaluatePolicy(admin_pb2.EvaluatePolicyRequest(name="ev", **request), timeout=120))
    return updates, updates[-1].result


def logged(server: ServerThread, policy: str = "ev") -> list[dict[str, Any]]:
    """Each joined decision as the test reads it from the database itself."""
    url = server.settings.db_url
    rewards = {r["event_id"]: r["reward"] for r in rows(url, "joined", "policy = :p", p=policy)}
    out = []
    for d in rows(url, "decisions", "policy = :p", p=policy):
        chosen = json.loads(d["chosen"])[0]
        out.append(dict(seg=json.loads(d["context"])[0][1][0][1], action=json.loads(d["actions"])[chosen][0],
                        p=json.loads(d["probabilities"])[0][chosen], r=rewards[d["event_id"]]))
    return out


@pytest.fixture
def ev_server(make_server: Any, db_url: str) -> Iterator[ServerThread]:
    server = make_server(server_settings(db_url))
    with LtrrClient(server.target) as client:
        client.create_policy(spec())
    log_traffic(server, 600)
    yield server


@pytest.fixture(scope="module")
def sqlite_ev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the table of bad requests, which reads nothing a request could change."""
    server = ServerThread(server_settings(f"sqlite:///{tmp_path_factory.mktemp('ev') / 'ltrr.db'}"))
    try:
        with LtrrClient(server.target) as client:
            client.create_policy(spec())
        log_traffic(server, 100)
        yield server
    finally:
        server.stop()


def weights(table: dict[str, float]) -> list[admin_pb2.ActionWeight]:
    return [admin_pb2.ActionWeight(action=a, weight=w) for a, w in table.items()]


def target(**kw: Any) -> admin_pb2.EvaluationTarget:
    return admin_pb2.EvaluationTarget(**kw)


def test_an_action_or_a_table_that_no_event_offered_is_not_estimated(ev_server: ServerThread) -> None:
    # Found from outside: action:ghost (a typo) and a table of unknown ids fell back to uniform on
    # every event and so were answered with uniform's figures under their own names.
    ghost_by_segment = admin_pb2.TableTarget(
        feature="u.seg", by_value=[admin_pb2.FeatureTable(value="x", weights=weights({"ghost": 1.0}))])
    _, result = evaluate(ev_server, targets=[
        target(action="ghost"), target(table=admin_pb2.TableTarget(default_weights=weights({"ghost": 2.0}))),
        target(table=admin_pb2.TableTarget(default_weights=weights({"a": 0.0})), name="zero"),
        target(table=ghost_by_segment, name="by segment"), target(action="a"), target(uniform=True)],
        estimators=[admin_pb2.ESTIMATOR_SNIPS])
    problems = {t.name: t.problem for t in result.targets}
    assert problems["action:ghost"] == ("action 'ghost' was offered by none of the 600 events: its estimate would "
                                        "be uniform's: it is not estimated")
    assert problems["table"] == ("none of the 600 events offered an action it gives weight to ('ghost'): its "
                                 "estimate would be uniform's: it is not estimated")
    assert "to (none)" in problems["zero"] and "('ghost')" in problems["by segment"]
    assert [t.name for t in result.targets if t.slots] == ["action:a", "uniform"]
    assert not any(t.slots for t in result.targets if t.problem)


def test_a_log_that_did_not_explore_says_what_it_cannot_see(ev_server: ServerThread) -> None:
    """An apprentice's log holds one action per decision, with probability 1: what the others would
    have earned is in no event. Found from outside: uniform was estimated at a third of the logged
    mean with an interval that excluded the truth, and tune rated every candidate at about three
    times the live policy, with nothing to say the log could not tell."""
    stub = admin_pb2_grpc.AdminServiceStub(ev_server.channel())
    some = [target(uniform=True), target(action="a"), target(action="c")]
    explored = list(stub.EvaluatePolicy(admin_pb2.EvaluatePolicyRequest(name="ev", targets=some)))[-1].result
    assert all(s.unlogged_share == 0 for t in explored.targets for s in t.slots)
    assert "unlogged" not in evaluation_table(explored)

    baseline = {"x": "a", "y": "b"}  # the caller's own logic: one action per segment
    with LtrrClient(ev_server.target) as client:
        client.create_policy(spec("app", mode=admin_pb2.POLICY_MODE_APPRENTICE))
        rng = random.Random(5)
        events = []
        for i in range(300):
            seg = SEGMENTS[i % 2]
            resp = client.decide("app", {"u": {"seg": seg}}, baseline=baseline[seg])
            events.append(reward_event(resp.event_id, float(rng.random() < MEANS[seg][resp.chosen_action_id])))
        list(client.stream_rewards([events]))
        wait_for(lambda: client.stats("app").joined >= 300, timeout=30, what="the apprentice's rewards joined")
    result = list(stub.EvaluatePolicy(admin_pb2.EvaluatePolicyRequest(name="app", targets=some)))[-1].result
    by_name = {t.name: t for t in result.targets}
    assert by_name["uniform"].slots[0].unlogged_share == pytest.approx(2 / 3)
    assert by_name["action:a"].slots[0].unlogged_share == pytest.approx(0.5)  # a was never shown on y
    assert by_name["action:c"].problem.startswith("the logged decisions gave probability 0 to every choice it makes")
    table = evaluation_table(result)
    assert "unlogged" in table.splitlines()[1] and "No estimate sees what those choices would have earned" in table

    tuned = list(stub.TunePolicy(admin_pb2.TunePolicyRequest(name="app", apply=True)))[-1].result
    with LtrrClient(ev_server.target) as client:
        assert not tuned.applied and describe(tuned.recommended) == describe(client.get_policy("app").spec)
    # Every candidate's replay strays from the baseline while it learns, the live configuration's too.
    assert all(c.unlogged_share > 0.01 for c in tuned.candidates), [c.unlogged_share for c in tuned.candidates]
    assert tuned.reason.startswith("the log did not explore: "), tuned.reason


def test_estimates_equal_the_formulas_over_the_logged_rows(ev_server: ServerThread) -> None:
    table = admin_pb2.TableTarget(
        feature="u.seg", default_weights=weights({"c": 1.0}),
        by_value=[admin_pb2.FeatureTable(value="x", weights=weights({"a": 3.0, "c": 1.0})),
                  admin_pb2.FeatureTable(value="y", weights=weights({"b": 1.0}))])
    updates, result = evaluate(ev_server, targets=[target(action="a"), target(uniform=True),
                                                   target(table=table, name="by segment")],
                               estimators=[admin_pb2.ESTIMATOR_IPS, admin_pb2.ESTIMATOR_SNIPS], baseline="uniform")
    assert updates[0].events_done == 0 and updates[0].events_total == 600
    assert [u.HasField("result") for u in updates] == [False] * (len(updates) - 1) + [True]
    assert result.events == 600

    log = logged(ev_server)
    r = np.array([e["r"] for e in log])
    p = np.array([e["p"] for e in log])
    assert result.logged.value == pytest.approx(r.mean(), abs=1e-12)
    probabilities = {
        "action:a": lambda e: float(e["action"] == "a"),
        "uniform": lambda e: 1 / 3,
        "by segment": lambda e: ({"a": 0.75, "c": 0.25} if e["seg"] == "x" else {"b": 1.0}).get(e["action"], 0.0),
    }
    assert [t.name for t in result.targets] == list(probabilities)
    w_uniform = np.array([probabilities["uniform"](e) for e in log]) / p
    for t in result.targets:
        w = np.array([probabilities[t.name](e) for e in log]) / p
        (slot,) = t.slots
        # Minus the baseline (uniform), paired over the same events.
        versus = slot.versus_baseline
        assert versus.ips.value == pytest.approx(np.mean(w * r) - np.mean(w_uniform * r), abs=1e-12)
        assert versus.ips.std_error == pytest.approx(np.std((w - w_uniform) * r, ddof=1) / np.sqrt(len(w)), abs=1e-12)
        snips_uniform = np.sum(w_uniform * r) / np.sum(w_uniform)
        assert versus.snips.value == pytest.approx(np.sum(w * r) / np.sum(w) - snips_uniform, abs=1e-12)
        assert not versus.HasField("dr")
        assert slot.ips.value == pytest.approx(np.mean(w * r), abs=1e-12)
        assert slot.snips.value == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-12)
        se = np.std(w * r, ddof=1) / np.sqrt(len(w))
        assert slot.ips.std_error == pytest.approx(se, rel=1e-9)
        assert slot.ips.lower == pytest.approx(slot.ips.value - 1.959963984540054 * se, rel=1e-9)
        assert slot.mean_weight == pytest.approx(w.mean(), rel=1e-12)
        assert slot.max_weight == pytest.approx(w.max(), rel=1e-12)
        assert slot.effective_sample_size == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
        assert not slot.HasField("dr")


def test_intervals_cover_the_world_and_dr_narrows_them(ev_server: ServerThread) -> None:
    """Each constant action's true value is known; the logged policy explored half the time."""
    _, result = evaluate(ev_server, targets=[target(action="a"), target(action="b"), target(action="c"),
                                             target(live=True), target(candidate=spec(learning_rate=0.2))])
    by_name = {t.name: t.slots[0] for t in result.targets}
    for action in "abc":
        truth = np.mean([MEANS[s][action] for s in SEGMENTS])
        for name in ("ips", "snips", "dr"):
            e = getattr(by_name[f"action:{action}"], name)
            # Four standard errors: a miss by chance has odds of 1 in 16,000.
            assert abs(e.value - truth) < 4 * e.std_error, (action, name, e, truth)
            assert e.lower < e.value < e.upper
    # The reward model explains most of the reward: the doubly robust estimate is the tighter one.
    for action in "abc":
        slot = by_name[f"action:{action}"]
        assert slot.dr.std_error < slot.ips.std_error
    # The live model has learned the world: better than always c (0.5), at most the best (0.85).
    live = by_name["live"]
    assert 0.5 < live.snips.value and live.snips.lower < 0.85
    assert by_name["candidate"].support > 0.5


def test_a_snapshot_is_a_target_and_time_ranges_select_events(ev_server: ServerThread) -> None:
    with LtrrClient(ev_server.target) as client:
        snap = client.snapshot("ev")
    _, result = evaluate(ev_server, targets=[target(snapshot_id=snap.snapshot_id)])
    assert result.targets[0].name == f"snapshot:{snap.snapshot_id}"
    assert result.targets[0].slots[0].snips.value > 0.5
    created = sorted(d["created_at"] for d in rows(ev_server.settings.db_url, "decisions", "policy = 'ev'"))
    middle = created[300]
    _, first = evaluate(ev_server, until_ms=int(middle * 1000), targets=[target(uniform=True)])
    _, second = evaluate(ev_server, since_ms=int(middle * 1000), targets=[target(uniform=True)])
    assert first.events + second.events == 600
    assert 250 < first.events < 350 and first.last_ms <= second.first_ms


@pytest.mark.parametrize("request_fields,code,field", [
    (dict(name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    (dict(since_ms=2_000, until_ms=1_000), grpc.StatusCode.INVALID_ARGUMENT, "until_ms"),
    (dict(since_ms=-1), grpc.StatusCode.INVALID_ARGUMENT, "since_ms"),
    (dict(until_ms=1_000), grpc.StatusCode.NOT_FOUND, "range since_ms=0, until_ms=1000"),
    (dict(targets=[target()]), grpc.StatusCode.INVALID_ARGUMENT, "targets[0]"),
    (dict(targets=[target(uniform=True), target(action="")]), grpc.StatusCode.INVALID_ARGUMENT, "targets[1].action"),
    (dict(targets=[target(table=admin_pb2.TableTarget(feature="seg"))]), grpc.StatusCode.INVALID_ARGUMENT,
     "targets[0].table.feature"),
    (dict(targets=[target(table=admin_pb2.TableTarget(
        default_weights=weights({"a": -1.0})))]), grpc.StatusCode.INVALID_ARGUMENT,
     "targets[0].table.default_weights[0].weight"),
    (dict(targets=[target(table=admin_pb2.TableTarget(
        by_value=[admin_pb2.FeatureTable(value="x", weights=weights({"a": 1.0}))]))]), grpc.StatusCode.INVALID_ARGUMENT,
     "targets[0].table.by_value"),
    (dict(targets=[target(candidate=admin_pb2.PolicySpec(kind=admin_pb2.POLICY_KIND_CCB))]),
     grpc.StatusCode.INVALID_ARGUMENT, "targets[0].candidate.kind"),
    (dict(targets=[target(candidate=admin_pb2.PolicySpec(epsilon=2.0))]), grpc.StatusCode.INVALID_ARGUMENT,
     "targets[0].candidate.epsilon"),
    (dict(targets=[target(snapshot_id=987654)]), grpc.StatusCode.NOT_FOUND, "snapshot 987654"),
    (dict(targets=[target(uniform=True)] * 65), grpc.StatusCode.INVALID_ARGUMENT, "max_evaluation_targets"),
    (dict(estimators=[7]), grpc.StatusCode.INVALID_ARGUMENT, "estimators[0]"),
    (dict(baseline="ghost"), grpc.StatusCode.INVALID_ARGUMENT, "baseline: names 0 of the targets ('live', 'uniform')"),
    (dict(targets=[target(candidate=spec()), target(candidate=spec(epsilon=0.1))], baseline="candidate"),
     grpc.StatusCode.INVALID_ARGUMENT, "give them names"),
], ids=["unknown policy", "until before since", "negative since", "no events in range", "empty target",
        "empty action", "feature without dot", "negative weight", "by_value without feature", "candidate kind",
        "candidate epsilon", "unknown snapshot", "too many targets", "unknown estimator",
        "unknown baseline", "ambiguous baseline"])
def test_bad_requests_name_the_field(sqlite_ev_server: ServerThread, request_fields: dict[str, Any],
                                     code: grpc.StatusCode, field: str) -> None:
    request = admin_pb2.EvaluatePolicyRequest(**({"name": "ev"} | request_fields))
    with pytest.raises(grpc.RpcError) as err:
        list(admin_pb2_grpc.AdminServiceStub(sqlite_ev_server.channel()).EvaluatePolicy(request, timeout=60))
    assert err.value.code() == code, err.value.details()
    assert field in err.value.details()


def evaluation_processes() -> list[Any]:
    return [p for p in multiprocessing.active_children() if p.name == "ltrr-job"]


def test_one_evaluation_at_a_time_and_a_caller_that_leaves_stops_its_own(ev_server: ServerThread) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(ev_server.channel())
    slow = admin_pb2.EvaluatePolicyRequest(name="ev", targets=[target(candidate=spec())] * 40)
    first = stub.EvaluatePolicy(slow, timeout=120)
    assert next(first).events_done == 0  # it runs
    with pytest.raises(grpc.RpcError) as err:
        list(stub.EvaluatePolicy(slow, timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_evaluations" in err.value.details()
    first.cancel()
    wait_for(lambda: not evaluation_processes() and not ev_server.core.jobs.running, timeout=10,
             what="the cancelled call's evaluation process gone")
    _, result = evaluate(ev_server, targets=[target(uniform=True)])
    assert result.events == 600


def test_an_evaluation_process_that_dies_fails_its_call(ev_server: ServerThread) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(ev_server.channel())
    call = stub.EvaluatePolicy(admin_pb2.EvaluatePolicyRequest(name="ev", targets=[target(candidate=spec())] * 40),
                               timeout=120)
    next(call)
    (proc,) = evaluation_processes()
    killer = threading.Timer(0.1, os.kill, (proc.pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "exit code -9" in err.value.details()
    _, result = evaluate(ev_server, targets=[target(uniform=True)])
    assert result.events == 600


def tune(server: ServerThread, **request: Any) -> Any:
    stub = admin_pb2_grpc.AdminServiceStub(server.channel())
    updates = list(stub.TunePolicy(admin_pb2.TunePolicyRequest(name="ev", **request), timeout=300))
    return updates[-1].result


def test_tune_ranks_a_grid_and_switches_only_to_a_clear_winner(ev_server: ServerThread) -> None:
    """The live policy explores half the time (mean reward about 0.6 here); a squarecb candidate
    replayed over its log exploits what it learns."""
    dry = tune(ev_server)
    assert len(dry.candidates) == 14 and not dry.applied and "apply" in dry.reason
    values = [c.estimate.value for c in dry.candidates]
    assert values == sorted(values, reverse=True)
    assert dry.logged.value < dry.candidates[0].estimate.lower
    assert dry.candidates[0].spec.exploration != admin_pb2.EXPLORATION_EPSILON or dry.candidates[0].spec.epsilon < 0.5
    assert dry.recommended == dry.candidates[0].spec
    # A log exploring half the time: each replay rests on a large part of its 600 events.
    assert all(60 < c.effective_sample_size <= 600 for c in dry.candidates), [
        c.effective_sample_size for c in dry.candidates]
    # Each candidate is also given against the live configuration's replay, over the same events.
    with LtrrClient(ev_server.target) as client:
        live_spec = describe(client.get_policy("ev").spec)
    (live,) = [c for c in dry.candidates if describe(c.spec) == live_spec]
    assert live.versus_live.value == 0 and live.versus_live.std_error == 0
    for c in dry.candidates:
        assert c.versus_live.value == pytest.approx(c.estimate.value - live.estimate.value, abs=1e-9)
    assert dry.candidates[0].versus_live.lower > 0
    # Paired, the difference is known more closely than either estimate.
    assert dry.candidates[0].versus_live.std_error < dry.candidates[0].estimate.std_error

    own = tune(ev_server, apply=True, candidates=[spec()])
    assert not own.applied and "own configuration" in own.reason
    assert own.recommended.epsilon == 0.5 and own.recommended.exploration == admin_pb2.EXPLORATION_EPSILON

    # Exploring even more than the live policy cannot be clearly better: the live configuration stays.
    # It is replayed too, as the yardstick, though the request did not name it.
    worse = tune(ev_server, apply=True, candidates=[spec(epsilon=0.9)])
    assert not worse.applied and "live configuration stays" in worse.reason, worse.reason
    assert worse.recommended.epsilon == 0.5
    assert sorted(c.spec.epsilon for c in worse.candidates) == [0.5, 0.9]
    assert worse.candidates[[c.spec.epsilon for c in worse.candidates].index(0.9)].versus_live.upper < 0

    squarecb = admin_pb2.PolicySpec(exploration=admin_pb2.EXPLORATION_SQUARECB, learning_rate=0.1)
    done = tune(ev_server, apply=True, candidates=[spec(epsilon=0.4), squarecb])
    assert done.applied, done.reason
    after = done.policy_after
    assert after.lineage == 2 and after.spec.exploration == admin_pb2.EXPLORATION_SQUARECB
    assert [a.id for a in after.spec.actions] == ["a", "b", "c"] and after.spec.join_window_seconds == 60
    warm = rows(ev_server.settings.db_url, "snapshots", "policy = 'ev' AND lineage = 2")
    assert [w["trigger"] for w in warm] == ["warm_start"]
    # Warm-started: the new lineage knows the world before it has learned a single event of its own.
    with LtrrClient(ev_server.target) as client:
        picks = [client.decide("ev", {"u": {"seg": "x"}}).chosen_action_id for _ in range(40)]
    assert picks.count("a") > 30


def test_tune_names_bad_candidates(sqlite_ev_server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as err:
        tune(sqlite_ev_server, candidates=[admin_pb2.PolicySpec(), admin_pb2.PolicySpec(learning_rate=-1)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates[1].learning_rate" in err.value.details()
