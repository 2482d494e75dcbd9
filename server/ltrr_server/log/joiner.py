"""The reward joiner: rewards meet their decisions by event id within the join window.

All methods run on one thread (the server's event loop); nothing here blocks or does I/O.
A decision is pending from the moment it is made, before its row is committed, so a
reward may arrive before the decision is durable. When the window closes (or, with
aggregation ``first``, at the first reward) the decision is joined: its reward is the
aggregate of the accepted rewards, or the policy's default reward when there were none.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ltrr_server.errors import Overloaded
from ltrr_server.tracing import recording


class Outcome:
    """How a reward was taken: plain strings (an Enum's Python-level hash costs on every reward)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    UNKNOWN = "unknown_event"
    INVALID = "invalid"
    # Not in memory: the caller must ask the database.
    LOOKUP = "lookup"


@dataclass(slots=True)
class PendingDecision:
    event_id: str
    policy: str
    lineage: int
    created_at: float
    deadline: float
    shared: str
    actions: list[str]
    action_ids: list[str]
    # Per slot: (chosen action index, probability it was drawn with).
    chosen: list[tuple[int, float]]
    explored: bool
    aggregation: str
    default_reward: float
    # Made on the first reward: most pending decisions never get one, and every container the
    # garbage collector tracks for a whole join window costs the decision path.
    rewards: list[float] | None = None
    reward_ids: set[str] | None = None
    oracle_best: float | None = None
    oracle_chosen: float | None = None
    # False for a plan the caller fixed: joined and credited, never learned.
    learn: bool = True
    # Retrieval decisions: what rewarding and crediting the plan needs (a RetrievalRecord).
    retrieval: Any = None
    # The traced call that made it (an OpenTelemetry SpanContext; None when not traced): its
    # learning is a span of that trace.
    trace: Any = None
    # The traced call that brought its first reward, when it was traced: the learn span links to it.
    reward_trace: Any = None

    def add_reward(self, reward_id: str, value: float) -> bool:
        """Records an accepted reward; False when this reward id was seen already."""
        if self.reward_ids is None:
            self.reward_ids = set()
        elif reward_id in self.reward_ids:
            return False
        self.reward_ids.add(reward_id)
        if self.rewards is None:
            self.rewards = [value]
        else:
            self.rewards.append(value)
        return True


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~7x as much, and one runs per reward
class JoinedEvent:
    seq: int
    event_id: str
    policy: str
    lineage: int
    shared: str
    actions: list[str]
    action_ids: list[str]
    chosen: list[tuple[int, float]]
    explored: bool
    reward: float
    n_rewards: int
    source: str
    oracle_best: float | None
    oracle_chosen: float | None
    joined_at: float
    learn: bool = True
    retrieval: Any = None
    trace: Any = None
    reward_trace: Any = None


# A decision joined recently: (policy, deadline, reward ids seen or None). A tuple, not a class:
# one is made per join.
_Closed = tuple[str, float, "set[str] | None"]


def aggregate(values: list[float], how: str) -> float:
    """The joined reward from the accepted rewards.

    >>> aggregate([1.0, 3.0], "sum"), aggregate([1.0, 3.0], "max"), aggregate([1.0, 3.0], "first")
    (4.0, 3.0, 1.0)
    """
    if how == "sum":
        return sum(values)
    if how == "max":
        return max(values)
    return values[0]


class Joiner:
    """Pending decisions, bounded by ``max_pending``; emits lists of ``JoinedEvent`` in join order."""

    def __init__(
        self, max_pending: int, next_seq: int, emit: Callable[[list[JoinedEvent]], None],
        closed_memory: int = 200_000,
    ) -> None:
        self._max_pending = max_pending
        self.next_seq = next_seq
        self._emit = emit
        self._pending: dict[str, PendingDecision] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._closed: OrderedDict[str, _Closed] = OrderedDict()
        self._closed_memory = closed_memory

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._pending or event_id in self._closed

    def get(self, event_id: str) -> PendingDecision | None:
        """The pending decision with this event id, if its window is still open."""
        return self._pending.get(event_id)

    def policy_of(self, event_id: str) -> str | None:
        """The policy of a decision still pending or recently joined (None: the log may know it)."""
        pd = self._pending.get(event_id)
        if pd is not None:
            return pd.policy
        closed = self._closed.get(event_id)
        return closed[0] if closed is not None else None

    def room(self) -> int:
        return self._max_pending - len(self._pending)

    def add(self, decision: PendingDecision) -> None:
        if len(self._pending) >= self._max_pending:
            raise Overloaded(
                f"{len(self._pending)} decisions wait for rewards (limits.max_pending_joins="
                f"{self._max_pending}); retry with backoff"
            )
        self._pending[decision.event_id] = decision
        heapq.heappush(self._deadlines, (decision.deadline, decision.event_id))

    def reward(
        self, event_id: str, reward_id: str, value: float, now: float,
        oracle_best: float | None = None, oracle_chosen: float | None = None,
    ) -> tuple[str, str]:
        """Classifies one reward and, if accepted, adds it to its decision. Returns (outcome, policy).

        With aggregation ``first`` the caller joins the decision (``close_now``) once the
        reward row is queued for the log, so the join never reaches the log before its reward.
        """
        pd = self._pending.get(event_id)
        if pd is not None:
            if not pd.add_reward(reward_id, value):
                return Outcome.DUPLICATE, pd.policy
            if pd.trace is not None and pd.reward_trace is None:
                pd.reward_trace = recording()
            if pd.oracle_best is None:
                pd.oracle_best, pd.oracle_chosen = oracle_best, oracle_chosen
            return Outcome.ACCEPTED, pd.policy
        closed = self._closed.get(event_id)
        if closed is None:
            return Outcome.LOOKUP, ""
        policy, deadline, seen = closed
        if seen is None:
            seen = set()
            self._closed[event_id] = (policy, deadline, seen)  # keeps its place in the order
        elif reward_id in seen:
            return Outcome.DUPLICATE, policy
        seen.add(reward_id)
        # Inside the window after an early (first-reward) join: stored, but the join is decided.
        return (Outcome.ACCEPTED if now <= deadline else Outcome.LATE), policy

    def close_now(self, event_ids: list[str], now: float) -> None:
        """Joins these pending decisions before their windows end (aggregation ``first``)."""
        pop = self._pending.pop
        self._join([pd for event_id in event_ids if (pd := pop(event_id, None)) is not None], now)

    def expire(self, now: float) -> int:
        """Joins every decision whose window has closed; returns how many."""
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, event_id = heapq.heappop(self._deadlines)
            pd = self._pending.pop(event_id, None)
            if pd is not None:
                due.append(pd)
        self._join(due, now)
        return len(due)

    def _join(self, decisions: list[PendingDecision], now: float) -> None:
        """Joins decisions already taken out of ``_pending``, in order; emits them in one list."""
        if not decisions:
            return
        closed = self._closed
        seq = self.next_seq
        joined = []
        # Locals and positional arguments: this runs once per joined reward.
        for pd in decisions:
            closed[pd.event_id] = (pd.policy, pd.deadline, pd.reward_ids)
            rewards = pd.rewards
            if rewards:
                reward, n, source = aggregate(rewards, pd.aggregation), len(rewards), "reward"
            else:
                reward, n, source = pd.default_reward, 0, "default"
            joined.append(JoinedEvent(
                seq, pd.event_id, pd.policy, pd.lineage, pd.shared, pd.actions, pd.action_ids, pd.chosen,
                pd.explored, reward, n, source, pd.oracle_best, pd.oracle_chosen, now, pd.learn, pd.retrieval,
                pd.trace, pd.reward_trace,
            ))
            seq += 1
        self.next_seq = seq
        for _ in range(len(closed) - self._closed_memory):
            closed.popitem(last=False)
        self._emit(joined)
