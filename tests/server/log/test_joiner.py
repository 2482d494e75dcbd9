"""The joiner's rules: windows, aggregation, default reward, duplicates, late rewards, bounds."""

from __future__ import annotations

import pytest

from ltrr_server.errors import Overloaded
from ltrr_server.log.joiner import JoinedEvent, Joiner, Outcome, PendingDecision


def pending(event_id: str, deadline: float, aggregation: str = "sum", default: float = 0.0) -> PendingDecision:
    return PendingDecision(
        event_id=event_id, policy="p", lineage=1, created_at=0.0, deadline=deadline, shared="shared |",
        actions=["|A id=a"], action_ids=["a"], chosen=[(0, 1.0)], explored=False, aggregation=aggregation,
        default_reward=default,
    )


def make(max_pending: int = 10) -> tuple[Joiner, list[JoinedEvent]]:
    out: list[JoinedEvent] = []
    return Joiner(max_pending, next_seq=7, emit=out.extend), out


@pytest.mark.parametrize("how,expected", [("sum", 3.5), ("max", 2.5), ("first", 1.0)])
def test_aggregation_at_window_close(how: str, expected: float) -> None:
    j, out = make()
    j.add(pending("e", deadline=10.0, aggregation=how))
    assert j.reward("e", "r1", 1.0, now=1.0)[0] == Outcome.ACCEPTED
    assert j.reward("e", "r2", 2.5, now=2.0)[0] == Outcome.ACCEPTED
    assert j.expire(now=9.9) == 0 and out == []
    assert j.expire(now=10.0) == 1
    assert (out[0].reward, out[0].n_rewards, out[0].source, out[0].seq) == (expected, 2, "reward", 7)


def test_default_reward_when_the_window_closes_empty() -> None:
    j, out = make()
    j.add(pending("e", deadline=5.0, default=-0.5))
    j.expire(now=6.0)
    assert (out[0].reward, out[0].source) == (-0.5, "default")


def test_duplicates_and_late_rewards() -> None:
    j, out = make()
    j.add(pending("e", deadline=5.0, aggregation="first"))
    assert j.reward("e", "r", 1.0, now=1.0) == (Outcome.ACCEPTED, "p")
    j.close_now(["e"], now=1.0)
    assert len(out) == 1
    assert j.reward("e", "r", 1.0, now=2.0)[0] == Outcome.DUPLICATE
    assert j.reward("e", "other", 1.0, now=2.0)[0] == Outcome.ACCEPTED  # in the window: stored, join decided
    assert j.reward("e", "later", 1.0, now=6.0)[0] == Outcome.LATE
    assert j.reward("never-seen", "", 1.0, now=6.0)[0] == Outcome.LOOKUP
    assert len(out) == 1


def test_join_order_gives_increasing_sequence_numbers() -> None:
    j, out = make()
    for i in range(5):
        j.add(pending(f"e{i}", deadline=float(5 - i)))
    j.expire(now=10.0)
    assert [e.event_id for e in out] == ["e4", "e3", "e2", "e1", "e0"]
    assert [e.seq for e in out] == [7, 8, 9, 10, 11]


def test_pending_is_bounded() -> None:
    j, _ = make(max_pending=2)
    j.add(pending("a", 1.0))
    j.add(pending("b", 1.0))
    with pytest.raises(Overloaded, match="max_pending_joins"):
        j.add(pending("c", 1.0))
    j.expire(now=2.0)
    j.add(pending("c", 3.0))


def test_a_joined_event_carries_its_decision_field_by_field() -> None:
    # The joiner builds joined events positionally (it runs once per reward): a field added or
    # moved in either class must not shift the others.
    j, out = make()
    pd = PendingDecision(
        event_id="e", policy="p", lineage=3, created_at=0.0, deadline=5.0, shared="shared |u x", actions=["|A id=a"],
        action_ids=["a"], chosen=[(0, 0.25)], explored=True, aggregation="first", default_reward=0.0, learn=False,
        retrieval="record", trace="span context",
    )
    j.add(pd)
    j.reward("e", "r", 0.5, now=1.0, oracle_best=0.9, oracle_chosen=0.4)
    j.close_now(["e"], now=2.0)
    [ev] = out
    shared = {f for f in JoinedEvent.__dataclass_fields__ if f in PendingDecision.__dataclass_fields__}
    assert shared == {"event_id", "policy", "lineage", "shared", "actions", "action_ids", "chosen", "explored",
                      "oracle_best", "oracle_chosen", "learn", "retrieval", "trace", "reward_trace"}
    assert all(getattr(ev, f) == getattr(pd, f) for f in shared)
    assert (ev.seq, ev.reward, ev.n_rewards, ev.source, ev.joined_at) == (7, 0.5, 1, "reward", 2.0)
