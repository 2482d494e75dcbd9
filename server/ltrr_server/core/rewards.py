"""Rewards: classified, committed, joined to their decisions; joins go to the log and the learner.

Acknowledgements wait for the commit of their rows; nothing else does. A decision waits in the
joiner for its join window; when it closes (or at the first reward, with aggregation ``first``)
the join is logged, counted, credited to retrieval strategies and handed to the learner.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from ltrr_server.bounds import ENGAGED_ITEMS, ID_CHARS, MAX_ABS_REWARD, NAME_CHARS, REWARD_ID_CHARS, magnitude_problem
from ltrr_server.config import Limits
from ltrr_server.core.policies import PolicyBook
from ltrr_server.errors import InvalidArgument, Overloaded
from ltrr_server.features import dumps
from ltrr_server.learner.learner import Learner
from ltrr_server.learner.restore import event_from_rows
from ltrr_server.log.joiner import JoinedEvent, Joiner, Outcome, PendingDecision
from ltrr_server.log.rows import JoinedRow, RewardRow
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.runtime import PolicyRuntime
from ltrr_server.ranking.ranking import Ranking
from ltrr_server.retrieval.retriever import Retriever
from ltrr_server.tenancy import DEFAULT_TENANT, SEP, tenant_of

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RewardInput:
    event_id: str
    reward_id: str = ""
    value: float = 0.0
    engaged: list[str] = field(default_factory=list)
    oracle_best: float | None = None
    oracle_chosen: float | None = None


@dataclass(frozen=True, slots=True)
class RewardResult:
    outcome: str
    message: str = ""


# One shared result per outcome that carries no message: a batch's results need no new objects.
_RESULTS = {o: RewardResult(o) for o in (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.LATE)}

# A named tuple's own constructor is a Python function; ``tuple.__new__`` builds the same
# instance in C, in about half the time. Rows are built once per reward and join.
_row = tuple.__new__
# A join's log row read off the joined event in C, whose fields are named as the row's: a plain
# tuple in JoinedRow's field order (the writer reads rows by position).
_joined_row: Callable[[JoinedEvent], tuple[Any, ...]] = attrgetter(*JoinedRow._fields)


def validate_reward(r: RewardInput) -> str:
    """The problem with a reward, naming the field, or ''.

    >>> validate_reward(RewardInput("e1", value=float("nan")))
    'value: must be finite, got nan'
    >>> validate_reward(RewardInput("e1", engaged=["x" * 300]))
    'engaged_item_ids[0]: longer than 256 characters'
    """
    if not r.event_id:
        return "event_id: is empty"
    if len(r.event_id) > ID_CHARS:
        return f"event_id: longer than {ID_CHARS} characters"
    if len(r.reward_id) > REWARD_ID_CHARS:
        return f"reward_id: longer than {REWARD_ID_CHARS} characters"
    if "\x00" in r.event_id or "\x00" in r.reward_id:
        # No database column takes one (PostgreSQL refuses the row): it could never be stored.
        return ("event_id" if "\x00" in r.event_id else "reward_id") + ": contains a NUL character"
    if problem := magnitude_problem(r.value, MAX_ABS_REWARD):
        return f"value: {problem}"
    if r.oracle_best is not None and not math.isfinite(r.oracle_best):
        return f"oracle_best_value: must be finite, got {r.oracle_best}"
    if r.oracle_chosen is not None and not math.isfinite(r.oracle_chosen):
        return f"oracle_chosen_value: must be finite, got {r.oracle_chosen}"
    if r.engaged:
        if len(r.engaged) > ENGAGED_ITEMS:
            return f"engaged_item_ids: more than {ENGAGED_ITEMS} items"
        for i, item in enumerate(r.engaged):
            if len(item) > NAME_CHARS:
                return f"engaged_item_ids[{i}]: longer than {NAME_CHARS} characters"
    return ""


class Rewards:
    """Takes rewards and joins. ``retriever`` is attached once the catalog is loaded."""

    def __init__(
        self, policies: PolicyBook, writer: EventLogWriter, store: EventLogStore, learner: Learner,
        metrics: Metrics, limits: Limits, retrieval_policies: Sequence[str] = (),
    ) -> None:
        self._policies = policies
        self._writer = writer
        self._store = store
        self._learner = learner
        self._metrics = metrics
        self._limits = limits
        self._retrieval_policies = set(retrieval_policies)
        self.retriever: Retriever | None = None
        self.ranking: Ranking | None = None
        self.joiner = Joiner(limits.max_pending_joins, 1, self._on_joined, closed_memory=limits.max_recent_joins)
        # Joins since the last flush; their rows are written then.
        self._joined_all: list[JoinedEvent] = []
        self._joined_events: list[JoinedEvent] = []
        # Joins since the last flush, by (policy, source, learned).
        self._joined_counts: dict[tuple[str, str, bool], int] = {}
        self._unattributed: dict[str, int] = {}

    # ------------------------------------------------------------------ rewards
    async def report(self, rewards: Sequence[RewardInput], tenant: str = DEFAULT_TENANT) -> list[RewardResult]:
        """Classifies, commits and joins rewards; returns once every accepted one is durable. A
        reward for an event of another ``tenant``'s policy is an unknown event."""
        if len(rewards) > self._limits.max_reward_batch:
            raise InvalidArgument("events", f"{len(rewards)} events in one batch, more than "
                                            f"limits.max_reward_batch={self._limits.max_reward_batch}")
        if self._writer.room() < len(rewards):
            raise Overloaded(f"write queue full (limits.max_write_queue_rows={self._limits.max_write_queue_rows});"
                             " retry with backoff")
        now = time.time()
        results: list[RewardResult | None] = [None] * len(rewards)
        rows: list[RewardRow] = []
        close_now: list[str] = []
        lookups: list[int] = []
        counts: dict[tuple[str, str], int] = {}
        # Locals for what every reward touches: this loop runs once per reward.
        retriever, joiner_get, joiner_reward = self.retriever, self.joiner.get, self.joiner.reward
        accepted, late = Outcome.ACCEPTED, Outcome.LATE
        join_at_first = {name for name, rt in self._policies.policies.items() if rt.spec.aggregation == "first"}
        # Only once a tenant other than the default one has a policy do events need their owner checked.
        check_owner = tenant != DEFAULT_TENANT or any(SEP in name for name in self._policies.policies)
        for i, r in enumerate(rewards):
            problem = validate_reward(r)
            if problem:
                results[i] = RewardResult(Outcome.INVALID, problem)
                counts[("", Outcome.INVALID)] = counts.get(("", Outcome.INVALID), 0) + 1
                continue
            event_id, value = r.event_id, r.value
            if check_owner:
                owner = self.joiner.policy_of(event_id)
                if owner is not None and tenant_of(owner) != tenant:
                    results[i] = RewardResult(Outcome.UNKNOWN, f"event_id: no decision {event_id!r}")
                    counts[("", Outcome.UNKNOWN)] = counts.get(("", Outcome.UNKNOWN), 0) + 1
                    continue
            pending = joiner_get(event_id) if retriever is not None else None
            engaged: list[int] | None = None
            if pending is not None and pending.retrieval is not None:
                # A retrieval plan's reward comes from the engaged items, not from the caller's value.
                assert retriever is not None
                engaged = retriever.engaged_positions(r.engaged)
                if r.value < 0 and pending.retrieval.page is not None:
                    # A Search's negative grade (a skip, a dislike): its items were not engaged with,
                    # for the plan, the memory strategy and the ranker alike.
                    engaged = []
                value = retriever.reward_value(pending.retrieval, engaged)
            outcome, policy = joiner_reward(event_id, r.reward_id, value, now, r.oracle_best, r.oracle_chosen)
            if engaged and outcome == accepted and pending is not None:
                rec = pending.retrieval
                rec.engaged = engaged if rec.engaged is None else rec.engaged + engaged
                if rec.page is not None:
                    # A Search's engagement grade: the reward's value, 0 a plain engagement (1).
                    grade = r.value or 1.0
                    grades = rec.grades if rec.grades is not None else {}
                    for p in engaged:
                        grades[p] = max(grades.get(p, 0.0), grade)
                    rec.grades = grades
            if outcome == Outcome.LOOKUP:
                lookups.append(i)
                continue
            key = (policy, outcome)
            counts[key] = counts.get(key, 0) + 1
            results[i] = _RESULTS[outcome]
            if outcome == accepted or outcome == late:
                # _reward_row, inline: a call per reward costs more than the row.
                rows.append(_row(RewardRow, (event_id, r.reward_id, r.value, dumps(r.engaged) if r.engaged else None,
                                             r.oracle_best, r.oracle_chosen, outcome, now)))
                if outcome == accepted and policy in join_at_first:
                    close_now.append(event_id)
        for (policy, outcome), n in counts.items():
            self._count_reward(policy, outcome, n)
        # The reward rows go to the log before the joins they cause.
        fut = self._writer.submit("rewards", rows, force=True) if rows else self._writer.barrier()
        self.joiner.close_now(close_now, now)
        self.flush_joined()
        if lookups:
            await self._classify_from_log(rewards, lookups, results, now, tenant if check_owner else None)
        await asyncio.wrap_future(fut)
        return [r if r is not None else RewardResult(Outcome.INVALID, "internal") for r in results]

    async def _classify_from_log(
        self, rewards: Sequence[RewardInput], lookups: list[int], results: list[RewardResult | None], now: float,
        tenant: str | None,
    ) -> None:
        keys = [(rewards[i].event_id, rewards[i].reward_id) for i in lookups]
        # Rows submitted before this look-up must be visible to it.
        await asyncio.wrap_future(self._writer.barrier())
        decisions, stored = await asyncio.to_thread(self._store.lookup_events, keys)
        rows = []
        for i, key in zip(lookups, keys, strict=True):
            found = decisions.get(key[0])
            if found is not None and tenant is not None and tenant_of(found[0]) != tenant:
                found = None  # another tenant's event: as unknown as one that never was
            if found is None:
                results[i] = RewardResult(Outcome.UNKNOWN, f"event_id: no decision {key[0]!r}")
                self._count_reward("", Outcome.UNKNOWN)
            elif key in stored:
                results[i] = _RESULTS[Outcome.DUPLICATE]
                self._count_reward(found[0], Outcome.DUPLICATE)
            else:
                stored.add(key)
                outcome = Outcome.ACCEPTED if now <= found[1] else Outcome.LATE
                results[i] = _RESULTS[outcome]
                self._count_reward(found[0], outcome)
                rows.append(_reward_row(rewards[i], outcome, now))
        if rows:
            await asyncio.wrap_future(self._writer.submit("rewards", rows, force=True))

    def _count_reward(self, policy: str, outcome: str, n: int = 1) -> None:
        self._metrics.child(self._metrics.rewards, policy, outcome).inc(n)
        rt = self._policies.policies.get(policy)
        if rt is not None:
            rt.count("rewards_" + outcome, n)
        else:
            self._unattributed[outcome] = self._unattributed.get(outcome, 0) + n

    def stats(self) -> dict[str, float]:
        """Figures that name no policy: unknown and invalid rewards, decisions waiting for a join."""
        return {
            "rewards_unknown": self._unattributed.get(Outcome.UNKNOWN, 0),
            "rewards_invalid": self._unattributed.get(Outcome.INVALID, 0),
            "pending_joins": len(self.joiner),
        }

    # ------------------------------------------------------------------ joins
    def expire(self, now: float) -> None:
        """Joins every decision whose window has closed (the server calls it every 50 ms)."""
        self.joiner.expire(now)
        self.flush_joined()
        self._metrics.pending_joins.set(len(self.joiner))

    def flush_joined(self) -> None:
        """Queues the joined rows of the last batch of joins in one go (one queue entry, not one per row),
        and counts them: per batch, since a labelled counter's update costs more than a join.

        The rows are queued for the log before the joins reach the learner: a learner process
        that dies is replaced from the log up to the last join handed to it."""
        if not self._joined_all:
            return
        joined, self._joined_all = self._joined_all, []
        self._writer.append("joined", list(map(_joined_row, joined)))
        policies = self._policies.policies
        for rt in policies.values():
            if rt.window_batch:
                rt.window.add_many(rt.window_batch)
                rt.window_batch = []
                if advice := rt.reward_scale_advice():
                    log.warning("policy %s: %s; the model learns best from rewards of about 1 (README: reward_scale)",
                                rt.spec.name, advice)
        self._learner.put_many(self._joined_events)
        self._joined_events = []
        counts, self._joined_counts = self._joined_counts, {}
        for (policy, source, learned), n in counts.items():
            self._metrics.child(self._metrics.joined, policy, source).inc(n)
            runtime = policies.get(policy)
            if runtime is None:
                continue
            if not learned:
                runtime.count("joined_unlearned", n)
                continue
            runtime.count("joined", n)
            if source == "default":
                runtime.count("joined_default", n)

    def _on_joined(self, events: list[JoinedEvent]) -> None:
        """Takes a list of joins from the joiner: credits retrieval plans, counts them, queues what is
        learned. Their log rows are made at the flush, in one pass."""
        self._joined_all.extend(events)
        retrieval_policies, policies = self._retrieval_policies, self._policies.policies
        counts, learned = self._joined_counts, self._joined_events
        for ev in events:
            if ev.policy in retrieval_policies:
                if ev.retrieval is not None and self.retriever is not None:
                    self.retriever.on_joined(ev.policy, ev.retrieval)
                    if ev.retrieval.page is not None and self.ranking is not None:
                        try:
                            self.ranking.on_joined(ev.policy, ev.retrieval.page, ev.retrieval.grades or {})
                        except Exception:  # the join and the plan's learning go on without the ranker's
                            log.exception("ranking: learning the page of event %s failed", ev.event_id)
                            self._metrics.child(self._metrics.ranking_failures, ev.policy).inc()
                    ev.retrieval = None  # the learner process needs none of it
                elif ev.learn:
                    # Recovered after a restart: the candidates are gone, so the reward cannot be
                    # computed from the engaged items. Logged as such, never learned.
                    ev.source, ev.learn = "norecord", False
            rt = policies.get(ev.policy)
            if rt is None:
                continue
            key = (ev.policy, ev.source, ev.learn)
            counts[key] = counts.get(key, 0) + 1
            if not ev.learn:
                continue
            learned.append(ev)
            regret = None
            if ev.oracle_best is not None:
                regret = ev.oracle_best - (ev.oracle_chosen if ev.oracle_chosen is not None else ev.reward)
                rt.true_regret_total += regret
                self._metrics.child(self._metrics.true_regret, ev.policy).inc(max(regret, 0.0))
            idx, prob = ev.chosen[0]
            rt.window_batch.append((ev.action_ids[idx], prob, ev.reward, ev.explored, regret))
            if ev.reward:
                rt.nonzero_rewards += 1
                rt.nonzero_reward_sum += abs(ev.reward)

    def recover(self, rt: PolicyRuntime, since: float) -> int:
        """Decisions whose join was not written before a stop: join them now, or wait again."""
        rows = self._store.unjoined_decisions(rt.spec.name, since)
        if not rows:
            return 0
        rewards = self._store.rewards_for([r["event_id"] for r in rows])
        now = time.time()
        for r in rows:
            ev = event_from_rows(r | {"seq": 0, "reward": 0.0}, rt.spec.name)
            pd = PendingDecision(
                event_id=ev.event_id, policy=rt.spec.name, lineage=ev.lineage, created_at=r["created_at"],
                deadline=r["deadline"], shared=ev.shared, actions=ev.actions, action_ids=ev.action_ids,
                chosen=ev.chosen, explored=bool(r["explored"]), aggregation=rt.spec.aggregation,
                default_reward=rt.spec.default_reward, learn=bool(r["learn"]),
            )
            for rw in rewards.get(ev.event_id, []):
                if rw["status"] != "accepted":
                    # A late reward's id still counts as seen.
                    pd.reward_ids = (pd.reward_ids or set()) | {rw["reward_id"]}
                    continue
                if pd.add_reward(rw["reward_id"], rw["value"]):
                    if pd.oracle_best is None:
                        pd.oracle_best, pd.oracle_chosen = rw["oracle_best"], rw["oracle_chosen"]
            self.joiner.add(pd)
            if pd.rewards and pd.aggregation == "first":
                self.joiner.close_now([pd.event_id], now)
        self.joiner.expire(now)
        self.flush_joined()
        return len(rows)


def _reward_row(r: RewardInput, outcome: str, now: float) -> RewardRow:
    return _row(RewardRow, (r.event_id, r.reward_id, r.value, dumps(r.engaged) if r.engaged else None,
                            r.oracle_best, r.oracle_chosen, outcome, now))
