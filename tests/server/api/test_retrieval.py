"""RetrievalService on a real server over the generated music catalog: plans, fusion, rewards, bad input."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from ltrr.v1 import admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from ltrr_client.client import retrieve_request, reward_event
from ltrr_server.demo.music import MusicWorld
from tests.conftest import TEST_ITEMS, ServerThread, retrieval_server_settings
from tests.helpers import rows, wait_for


@pytest.fixture
def rserver(make_server: Any, db_url: str, tmp_path: Path) -> ServerThread:
    return make_server(retrieval_server_settings(db_url, tmp_path / "data"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld(n_items=TEST_ITEMS, seed=42)


def _stubs(s: ServerThread) -> tuple[retrieval_pb2_grpc.RetrievalServiceStub, feedback_pb2_grpc.FeedbackServiceStub]:
    ch = s.channel()
    return retrieval_pb2_grpc.RetrievalServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)


def test_retrieve_returns_fused_candidates_with_provenance_and_the_plan(rserver: ServerThread,
                                                                       world: MusicWorld) -> None:
    rs, _ = _stubs(rserver)
    song = next(it for it in world.items if it["type"] == "song")
    embedding = world.embeddings[world.index[song["id"]]].tolist()
    resp = rs.Retrieve(retrieve_request("retrieval", song["title"], embedding=embedding,
                                        fixed_plan={"lexical": 10, "vector": 10}))
    assert resp.event_id and resp.plan == "lexical:10+vector:10" and resp.probability == 1.0
    assert [(r.strategy, r.budget) for r in resp.strategies] == [("lexical", 10), ("vector", 10)]
    assert all(r.returned <= 10 and r.latency_ms >= 0 and not r.error for r in resp.strategies)
    ids = [c.item_id for c in resp.candidates]
    assert len(ids) == len(set(ids)) == resp.total_candidates  # a deduplicated union
    assert resp.total_candidates <= sum(r.returned for r in resp.strategies)
    assert song["id"] in ids[:3]
    scores = [c.fused_score for c in resp.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in resp.candidates:  # reciprocal rank fusion over the strategies that found it
        assert c.fused_score == pytest.approx(sum(1.0 / (60 + h.rank) for h in c.hits))
        assert {h.strategy for h in c.hits} <= {"lexical", "vector"}
    # Found by both (first by lexical, and nearest to its own embedding): first in the fused list.
    assert resp.candidates[0].item_id == song["id"]
    assert [h.strategy for h in resp.candidates[0].hits] == ["lexical", "vector"]


def test_the_policy_chooses_a_plan_and_logs_it_with_its_probability(rserver: ServerThread) -> None:
    rs, _ = _stubs(rserver)
    resp = rs.Retrieve(retrieve_request("retrieval", "mellow jazz songs", limit=5))
    assert len(resp.candidates) <= 5 and resp.total_candidates >= len(resp.candidates)
    n_plans = 3 * 3 * 2 * 2 - 1
    assert resp.probability == pytest.approx(1 / n_plans)  # a fresh model: uniform over the plans
    running = {r.strategy: r.budget for r in resp.strategies}
    assert resp.plan == "+".join(f"{s}:{b}" for s, b in running.items())
    wait_for(lambda: rows(rserver.settings.db_url, "decisions", "event_id = :e", e=resp.event_id), what="decision")
    d = rows(rserver.settings.db_url, "decisions", "event_id = :e", e=resp.event_id)[0]
    assert d["actions"].startswith("#") and d["learn"]  # plans are logged once, as a shared action set
    assert rows(rserver.settings.db_url, "action_sets", "key = :k", k=d["actions"][1:])
    assert '"h"' in d["context"] and '"mellow"' in d["context"]  # the query features are logged too


def test_a_reward_naming_an_engaged_candidate_becomes_the_plans_reward(rserver: ServerThread,
                                                                       world: MusicWorld) -> None:
    rs, fb = _stubs(rserver)
    song = next(it for it in world.items if it["type"] == "song")
    hit = rs.Retrieve(retrieve_request("retrieval", song["title"], fixed_plan={"lexical": 10}))
    miss = rs.Retrieve(retrieve_request("retrieval", song["title"], fixed_plan={"lexical": 50, "explore": 10}))
    assert song["id"] in [c.item_id for c in hit.candidates]
    # The caller's value is ignored: the plan's reward comes from what was engaged with.
    assert fb.ReportReward(reward_event(hit.event_id, 0.0, engaged=[song["id"]])).status == \
        feedback_pb2.REWARD_STATUS_ACCEPTED
    fb.ReportReward(reward_event(miss.event_id, 5.0, engaged=["not-in-the-catalog"]))
    joined = wait_for(lambda: {r["event_id"]: r for r in rows(rserver.settings.db_url, "joined")}
                      if len(rows(rserver.settings.db_url, "joined")) == 2 else None, what="joins")
    drawn_hit = sum(r.returned for r in hit.strategies)
    drawn_miss = sum(r.returned for r in miss.strategies)
    assert joined[hit.event_id]["reward"] == pytest.approx(1.0 - 0.001 * drawn_hit)
    assert joined[miss.event_id]["reward"] == pytest.approx(-0.001 * drawn_miss)
    # Fixed plans are credited but never learned.
    assert all(not d["learn"] for d in rows(rserver.settings.db_url, "decisions"))
    admin = admin_pb2_grpc.AdminServiceStub(rserver.channel())
    stats = admin.GetPolicyStats(admin_pb2.GetPolicyRequest(name="retrieval"))
    assert stats.learned == 0
    text = _metrics(rserver)
    assert 'ltrr_strategy_hits_total{strategy="lexical"} 1.0' in text
    assert 'ltrr_strategy_joined_runs_total{strategy="lexical"} 2.0' in text
    assert 'ltrr_plan_choices_total{fixed="yes",plan="lexical:10",policy="retrieval"} 1.0' in text


def test_memory_hit_rate_on_repeated_head_queries_rises_as_rewards_arrive(rserver: ServerThread,
                                                                          world: MusicWorld) -> None:
    rs, fb = _stubs(rserver)
    heads = world.head_queries[:5]
    hits_per_round = []
    for _ in range(4):
        found = 0
        for text, target in heads:
            target_id = world.items[target]["id"]
            resp = rs.Retrieve(retrieve_request("retrieval", text, fixed_plan={"memory": 10, "lexical": 50}))
            mem_ids = [c.item_id for c in resp.candidates if any(h.strategy == "memory" for h in c.hits)]
            found += target_id in mem_ids
            engaged = [target_id] if target_id in [c.item_id for c in resp.candidates] else []
            # The user found it some other way (another page): memory learns from it all the same.
            fb.ReportReward(reward_event(resp.event_id, 0.0, engaged=engaged or [target_id]))
        hits_per_round.append(found)
    assert hits_per_round[0] == 0  # cold start: memory knows nothing
    assert hits_per_round[-1] == len(heads)  # after one round of engagements it finds every target
    text = _metrics(rserver)
    assert 'ltrr_strategy_hits_total{strategy="memory"} 15.0' in text


def test_memory_statistics_and_the_catalog_survive_a_restart(make_server: Any, sqlite_url: str, tmp_path: Path,
                                                             world: MusicWorld) -> None:
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data")
    s = make_server(settings)
    rs, fb = _stubs(s)
    text, target = world.head_queries[0]
    target_id = world.items[target]["id"]
    for _ in range(3):
        resp = rs.Retrieve(retrieve_request("retrieval", text, fixed_plan={"memory": 10}))
        fb.ReportReward(reward_event(resp.event_id, 0.0, engaged=[target_id]))
    s.stop()
    again = make_server(settings)
    assert len(again.core.retriever.catalog) == TEST_ITEMS  # loaded, not ingested again
    resp = _stubs(again)[0].Retrieve(retrieve_request("retrieval", text, fixed_plan={"memory": 10}))
    assert [c.item_id for c in resp.candidates] == [target_id]
    assert resp.candidates[0].hits[0].score == pytest.approx((3 + 0.01) / (3 + 1.0))


def _bad(**kw: Any) -> retrieval_pb2.RetrieveRequest:
    base: dict[str, Any] = {"policy": "retrieval", "query": "jazz"}
    base.update(kw)
    plan = base.pop("fixed_plan", None)
    req = retrieval_pb2.RetrieveRequest(**base)
    if plan:
        req.fixed_plan.update(plan)
    return req


@pytest.mark.parametrize(("req", "code", "field"), [
    (_bad(query=""), grpc.StatusCode.INVALID_ARGUMENT, "query"),
    (_bad(query="   "), grpc.StatusCode.INVALID_ARGUMENT, "query"),
    (_bad(query="?!"), grpc.StatusCode.INVALID_ARGUMENT, "query"),
    (_bad(query="x" * 513), grpc.StatusCode.INVALID_ARGUMENT, "query"),
    (_bad(query_embedding=[0.5] * 3), grpc.StatusCode.INVALID_ARGUMENT, "query_embedding"),
    (_bad(query_embedding=[0.5] * 31 + [float("nan")]), grpc.StatusCode.INVALID_ARGUMENT, "query_embedding[31]"),
    (_bad(policy="nope"), grpc.StatusCode.NOT_FOUND, "policy"),
    (_bad(policy=""), grpc.StatusCode.INVALID_ARGUMENT, "policy"),
    (_bad(policy="demo"), grpc.StatusCode.FAILED_PRECONDITION, "policy"),
    (_bad(fixed_plan={"bm42": 10}), grpc.StatusCode.INVALID_ARGUMENT, "fixed_plan.bm42"),
    (_bad(fixed_plan={"lexical": 7}), grpc.StatusCode.INVALID_ARGUMENT, "fixed_plan.lexical"),
    (_bad(fixed_plan={"lexical": 0}), grpc.StatusCode.INVALID_ARGUMENT, "fixed_plan"),
], ids=["empty", "blank", "no letters", "oversized", "embedding dimension", "NaN embedding", "unknown policy",
        "no policy", "not a retrieval policy", "unknown strategy", "budget off the ladder", "plan runs nothing"])
def test_bad_retrieve_requests_get_a_clear_status(refusing_rserver: ServerThread, req: retrieval_pb2.RetrieveRequest,
                                                  code: grpc.StatusCode, field: str) -> None:
    rs, _ = _stubs(refusing_rserver)
    with pytest.raises(grpc.RpcError) as err:
        rs.Retrieve(req)
    assert err.value.code() == code
    assert (err.value.details() or "").startswith(field) or f"{field}:" in (err.value.details() or "")
    assert rows(refusing_rserver.settings.db_url, "decisions") == []  # nothing logged


def test_a_retrieval_policy_cannot_become_an_apprentice(rserver: ServerThread) -> None:
    """Found from outside: the update was accepted ("the change applies live") and Retrieve went
    on drawing plans: its requests name no baseline for an apprentice to serve."""
    admin = admin_pb2_grpc.AdminServiceStub(rserver.channel())
    with pytest.raises(grpc.RpcError) as err:
        admin.UpdatePolicy(admin_pb2.UpdatePolicyRequest(spec=admin_pb2.PolicySpec(
            name="retrieval", mode=admin_pb2.POLICY_MODE_APPRENTICE)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("spec.mode: policy 'retrieval' draws plans for Retrieve and Search")
    spec = admin.GetPolicy(admin_pb2.GetPolicyRequest(name="retrieval")).spec
    assert spec.mode == admin_pb2.POLICY_MODE_ONLINE


def test_a_retrieval_policy_refuses_imported_lines_it_could_never_learn(rserver: ServerThread) -> None:
    """Found from outside: DSJSON lines imported into a retrieval policy were taken, joined and
    never learned: a plan is learned from the candidates its strategies returned, which a line
    does not carry."""
    line = (Path(__file__).parents[2] / "fixtures" / "dsjson" / "dsjson_cb.json").read_text().splitlines()[0]
    admin = admin_pb2_grpc.AdminServiceStub(rserver.channel())
    with pytest.raises(grpc.RpcError) as err:
        list(admin.ImportEvents(iter([admin_pb2.ImportBatch(policy="retrieval", lines=[line])]), timeout=30))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.value.details() or "").startswith("policy 'retrieval' draws plans for Retrieve and Search")
    assert rows(rserver.settings.db_url, "decisions") == []


def test_retrieve_without_retrieval_configured_is_a_failed_precondition(server: ServerThread) -> None:
    rs = retrieval_pb2_grpc.RetrievalServiceStub(server.channel())
    with pytest.raises(grpc.RpcError) as err:
        rs.Retrieve(retrieve_request("demo", "jazz"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_learned_policy_beats_random_plans_on_the_music_world(make_server: Any, sqlite_url: str,
                                                                  tmp_path: Path) -> None:
    """A short run of the retrieval simulation through the real server."""
    from ltrr_server.simulation.retrieval import run_retrieval_simulation

    s = make_server(retrieval_server_settings(sqlite_url, tmp_path / "data"))
    import asyncio

    sim = asyncio.run(run_retrieval_simulation(
        s.target, queries=3000, report_every=500, n_items=TEST_ITEMS, ladders={
            "lexical": (0, 10, 50), "vector": (0, 10, 50), "memory": (0, 10), "explore": (0, 10)},
        cost=0.001, singles_every=10**9, tail=1000, seed=random.Random(5).randrange(1000), out=None,
    ))
    learned, rand = sim.tail["learned"], sim.tail["random"]
    every = sim.tail["all-largest"]
    assert learned["reward"] > rand["reward"] + 0.05, sim.tail
    assert learned["recall"] >= every["recall"] - 0.03, sim.tail
    assert learned["candidates"] <= 0.75 * every["candidates"], sim.tail


def _metrics(s: ServerThread) -> str:
    import urllib.request

    with urllib.request.urlopen(s.metrics_url) as r:  # noqa: S310 - a local test server
        return str(r.read().decode())


class _Failing:
    """A plug-in strategy registered by the test: it always fails."""

    kind = "failing"

    def __init__(self, name: str) -> None:
        self.name = name

    def retrieve(self, query: Any, budget: int) -> list[tuple[int, float]]:
        raise RuntimeError("index offline")


def test_a_plugged_in_strategy_runs_and_its_failure_does_not_fail_the_request(
    make_server: Any, sqlite_url: str, tmp_path: Path, world: MusicWorld,
) -> None:
    import dataclasses

    from ltrr_server.config import StrategySpec
    from ltrr_server.strategies import base

    base.register("failing")(lambda name, params, env: _Failing(name))
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data")
    r = settings.retrieval
    settings = dataclasses.replace(settings, retrieval=dataclasses.replace(
        r, strategies=(*r.strategies, StrategySpec("flaky", "failing", (0, 10)))))
    s = make_server(settings)
    rs, _ = _stubs(s)
    song = next(it for it in world.items if it["type"] == "song")
    resp = rs.Retrieve(retrieve_request("retrieval", song["title"], fixed_plan={"lexical": 10, "flaky": 10}))
    runs = {r.strategy: r for r in resp.strategies}
    assert runs["flaky"].error == "RuntimeError: index offline" and runs["flaky"].returned == 0
    assert runs["lexical"].returned > 0 and song["id"] in [c.item_id for c in resp.candidates]
    assert 'ltrr_strategy_errors_total{strategy="flaky"} 1.0' in _metrics(s)
