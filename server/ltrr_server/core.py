"""The learning loop in plain classes: decide, take rewards, join, learn, snapshot, restore.

The gRPC servicers only convert messages and call this. Everything runs on the asyncio
event loop thread except SQL writes (the writer thread), learning (the learner thread)
and start-up, which happens before the server accepts calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from ltrr_server.config import ActionSpec, PolicySpec, Settings
from ltrr_server.errors import AlreadyExists, InvalidArgument, NotFound, Overloaded
from ltrr_server.features import (
    Namespaces,
    action_line,
    dumps,
    namespaces_from_json,
    namespaces_to_json,
    shared_line,
)
from ltrr_server.learner.learner import Learner, LearnerState, SnapshotInfo
from ltrr_server.log import db
from ltrr_server.log.joiner import JoinedEvent, Joiner, Outcome, PendingDecision
from ltrr_server.log.rows import DecisionRow, JoinedRow, RewardRow
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel
from ltrr_server.policy.runtime import PolicyRuntime, draw_slots
from ltrr_server.regret import RewardWindow

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 64
MAX_REWARD_ID_LENGTH = 128
MAX_ENGAGED_ITEMS = 1000


@dataclass
class SlotResult:
    chosen: int
    probability: float
    probabilities: list[float]


@dataclass
class Decision:
    event_id: str
    action_ids: list[str]
    slots: list[SlotResult]
    model_version: int


@dataclass
class RewardInput:
    event_id: str
    reward_id: str = ""
    value: float = 0.0
    engaged: list[str] = field(default_factory=list)
    oracle_best: float | None = None
    oracle_chosen: float | None = None


@dataclass
class RewardResult:
    outcome: str
    message: str = ""


@dataclass
class PolicyInfo:
    spec: PolicySpec
    revision: int
    lineage: int
    model_version: int
    created_at: float
    updated_at: float


def _float_lists(rows: list[list[float]]) -> str:
    """JSON for lists of floats, without the general encoder (this runs once per decision).

    >>> _float_lists([[0.25, 0.75]])
    '[[0.25,0.75]]'
    """
    return "[" + ",".join("[" + ",".join(map(repr, r)) + "]" for r in rows) + "]"


def _validate_reward(r: RewardInput) -> str:
    """The problem with a reward, naming the field, or ''."""
    if not r.event_id:
        return "event_id: is empty"
    if len(r.event_id) > MAX_ID_LENGTH:
        return f"event_id: longer than {MAX_ID_LENGTH} characters"
    if len(r.reward_id) > MAX_REWARD_ID_LENGTH:
        return f"reward_id: longer than {MAX_REWARD_ID_LENGTH} characters"
    if not math.isfinite(r.value):
        return f"value: must be finite, got {r.value}"
    for name in ("oracle_best", "oracle_chosen"):
        v = getattr(r, name)
        if v is not None and not math.isfinite(v):
            return f"{name}_value: must be finite, got {v}"
    if len(r.engaged) > MAX_ENGAGED_ITEMS:
        return f"engaged_item_ids: more than {MAX_ENGAGED_ITEMS} items"
    return ""


class Ltrr:
    """The server's core. ``open`` restores every policy; ``close`` snapshots and flushes."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = settings.limits
        self.engine = db.create_engine(settings.db_url)
        self.store = EventLogStore(self.engine)
        self.writer = EventLogWriter(
            self.engine, metrics, settings.limits.max_write_queue_rows, settings.write_batch_rows,
            linger=settings.write_linger_seconds, idle_linger=settings.write_idle_linger_seconds,
        )
        self.learner = Learner(
            self.writer, metrics, self._on_publish, settings.publish_interval_seconds,
            settings.snapshot_interval_seconds, self.store.latest_snapshot_id,
        )
        self.joiner = Joiner(settings.limits.max_pending_joins, 1, self._on_joined,
                             closed_memory=settings.limits.max_recent_joins)
        self._joined_rows: list[JoinedRow] = []
        self._unattributed: dict[str, int] = {}
        self._joined_events: list[JoinedEvent] = []
        self.policies: dict[str, PolicyRuntime] = {}
        self._rng = random.Random()
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_counter = 0
        self._expiry_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Migrates the schema, loads policies, restores models (snapshot + replay), recovers joins."""
        db.migrate(self.engine)
        self.writer.start()
        self.joiner.next_seq = self.store.max_joined_seq() + 1
        stored = {row["name"]: row for row in self.store.load_policies()}
        now = time.time()
        for spec in self.settings.policies:
            if spec.name not in stored:
                self.store.insert_policy(spec, 1, 1, self.joiner.next_seq, now)
                stored[spec.name] = dict(spec=spec, revision=1, lineage=1, lineage_start_seq=self.joiner.next_seq,
                                         created_at=now, updated_at=now)
            elif stored[spec.name]["spec"] != spec:
                log.info("policy %s: the database holds an admin-changed spec; the config file's is ignored",
                         spec.name)
        for row in stored.values():
            self._restore(row)
        self.learner.drain_before_start()
        self.learner.start()

    def _restore(self, row: dict[str, object]) -> None:
        spec = row["spec"]
        assert isinstance(spec, PolicySpec)
        lineage = int(row["lineage"])  # type: ignore[call-overload]
        start_seq = int(row["lineage_start_seq"])  # type: ignore[call-overload]
        snap = self.store.latest_snapshot(spec.name, lineage)
        if snap is not None:
            model = PolicyModel.from_bytes(snap["model"], spec.kind)
            last_seq, version, since = int(snap["last_joined_seq"]), int(snap["model_version"]), snap["created_at"]
            since -= spec.join_window_seconds + 60.0
        else:
            model, last_seq, version, since = PolicyModel.create(spec), start_seq - 1, 0, 0.0
        state = LearnerState(spec.name, lineage, model, last_seq, version, last_snapshot_at=time.time())
        replayed = 0
        t0 = time.perf_counter()
        for ev in self.store.joined_after(spec.name, max(last_seq, start_seq - 1)):
            if ev["lineage"] != lineage:
                continue
            state.learn_event(self._event_from_rows(ev, spec))
            state.unsnapshotted += 1
            replayed += 1
        rt = PolicyRuntime(
            spec=spec, revision=int(row["revision"]), lineage=lineage,  # type: ignore[call-overload]
            lineage_start_seq=start_seq, created_at=float(row["created_at"]),  # type: ignore[arg-type]
            updated_at=float(row["updated_at"]), serving=model, model_version=version,  # type: ignore[arg-type]
            window=RewardWindow(self.settings.metrics_window),
        )
        self._register(rt)
        self.metrics.learner_lag_events.labels(spec.name).set_function(
            lambda rt=rt, name=spec.name: self.learner.backlog(name, rt.enqueued)  # type: ignore[misc]
        )
        self.learner.set_state(state)
        recovered = self._recover_joins(rt, since)
        log.info("policy %s: lineage %d, snapshot %s, replayed %d joined events in %.2fs, recovered %d joins",
                 spec.name, lineage, snap["id"] if snap else "none", replayed, time.perf_counter() - t0, recovered)

    @staticmethod
    def _event_from_rows(ev: dict[str, object], spec: PolicySpec) -> JoinedEvent:
        """A logged decision (and its join, for a replay) as the learner takes it."""
        context = namespaces_from_json(json.loads(str(ev["context"])))
        actions = json.loads(str(ev["actions"]))
        chosen_idx = json.loads(str(ev["chosen"]))
        probs = json.loads(str(ev["probabilities"]))
        return JoinedEvent(
            seq=int(ev["seq"]),  # type: ignore[call-overload]
            event_id=str(ev["event_id"]), policy=spec.name, lineage=int(ev["lineage"]),  # type: ignore[call-overload]
            shared=shared_line(context),
            actions=[action_line(a, namespaces_from_json(f)) for a, f in actions],
            action_ids=[a for a, _ in actions],
            chosen=[(i, probs[s][i]) for s, i in enumerate(chosen_idx)],
            explored=False, reward=float(ev["reward"]),  # type: ignore[arg-type]
            n_rewards=0, source="replay", oracle_best=None, oracle_chosen=None, joined_at=time.time(),
        )

    def _recover_joins(self, rt: PolicyRuntime, since: float) -> int:
        """Decisions whose join was not written before a stop: join them now, or wait again."""
        rows = self.store.unjoined_decisions(rt.spec.name, since)
        if not rows:
            return 0
        rewards = self.store.rewards_for([r["event_id"] for r in rows])
        now = time.time()
        for r in rows:
            ev = self._event_from_rows(r | {"seq": 0, "reward": 0.0}, rt.spec)
            pd = PendingDecision(
                event_id=ev.event_id, policy=rt.spec.name, lineage=ev.lineage, created_at=r["created_at"],
                deadline=r["deadline"], shared=ev.shared, actions=ev.actions, action_ids=ev.action_ids,
                chosen=ev.chosen, explored=bool(r["explored"]), aggregation=rt.spec.aggregation,
                default_reward=rt.spec.default_reward,
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
                self.joiner.close_now(pd.event_id, now)
        self.joiner.expire(now)
        self._flush_joined()
        return len(rows)

    async def start_background(self) -> None:
        self._expiry_task = asyncio.create_task(self._expire_loop())

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.joiner.expire(time.time())
            self._flush_joined()
            self.metrics.pending_joins.set(len(self.joiner))

    async def aclose(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Learns what is queued, snapshots every changed policy, commits everything."""
        self.learner.stop()
        self.writer.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ callbacks
    def _flush_joined(self) -> None:
        """Queues the joined rows of the last batch of joins in one go (one queue entry, not one per row)."""
        if self._joined_rows:
            rows, self._joined_rows = self._joined_rows, []
            self.writer.append("joined", rows)
            for rt in self.policies.values():
                if rt.window_batch:
                    rt.window.add_many(rt.window_batch)
                    rt.window_batch = []
            self.learner.put_many(self._joined_events)
            self._joined_events = []

    def _on_joined(self, ev: JoinedEvent) -> None:
        self._joined_rows.append(JoinedRow(
            ev.seq, ev.event_id, ev.policy, ev.reward, ev.n_rewards, ev.source, ev.oracle_best, ev.oracle_chosen,
            ev.joined_at,
        ))
        self._joined_events.append(ev)
        rt = self.policies.get(ev.policy)
        if rt is None:
            return
        regret = None
        if ev.oracle_best is not None:
            regret = ev.oracle_best - (ev.oracle_chosen if ev.oracle_chosen is not None else ev.reward)
            rt.true_regret_total += regret
            self.metrics.true_regret.labels(ev.policy).inc(max(regret, 0.0))
        idx, prob = ev.chosen[0]
        rt.window_batch.append((ev.action_ids[idx], prob, ev.reward, ev.explored, regret))
        rt.count("joined")
        if ev.source == "default":
            rt.count("joined_default")
        self.metrics.child(self.metrics.joined, ev.policy, ev.source).inc()
        rt.enqueued += 1

    def _on_publish(self, policy: str, lineage: int, model: PolicyModel, version: int, lag: float) -> None:
        """Called on the thread that receives from the learner process: one attribute swap, atomic
        for the event loop, which reads `rt.serving` once per decision."""
        rt = self.policies.get(policy)
        if rt is None or rt.lineage != lineage:
            return
        rt.serving = model
        rt.model_version = version
        rt.last_lag_seconds = lag
        self.metrics.model_version.labels(policy).set(version)
        self.metrics.learner_lag_seconds.labels(policy).set(lag)

    # ------------------------------------------------------------------ decisions
    def _next_event_id(self) -> str:
        """A random per-process prefix and a counter: unique across restarts, and no system call
        per decision (``uuid4`` reads the OS entropy pool every time)."""
        self._event_counter += 1
        return f"{self._event_prefix}{self._event_counter:016x}"

    def policy(self, name: str) -> PolicyRuntime:
        rt = self.policies.get(name)
        if rt is None:
            if not name:
                raise InvalidArgument("policy", "is empty")
            raise NotFound(f"policy {name!r} not found", field="policy")
        return rt

    async def check_new_event_id(self, event_id: str) -> None:
        """A caller-chosen event id must be new, also to the log (rows with a used id are not stored)."""
        if event_id and event_id not in self.joiner and len(event_id) <= MAX_ID_LENGTH:
            found, _ = await asyncio.to_thread(self.store.lookup_events, [(event_id, "")])
            if found:
                raise InvalidArgument("event_id", f"event id {event_id!r} is already used")

    def decide(
        self, policy: str, context: Namespaces, actions: Sequence[ActionSpec] | None = None,
        event_id: str = "", slots: int = 0,
    ) -> Decision:
        """Chooses for one context; logs the decision with its probabilities."""
        rt = self.policy(policy)
        if actions:
            if len(actions) > self.limits.max_actions:
                raise InvalidArgument("actions", f"{len(actions)} actions, more than limits.max_actions="
                                                 f"{self.limits.max_actions}")
            seen: set[str] = set()
            for i, a in enumerate(actions):
                if not a.id:
                    raise InvalidArgument(f"actions[{i}].id", "action id is empty")
                if len(a.id) > 256:
                    raise InvalidArgument(f"actions[{i}].id", "longer than 256 characters")
                if a.id in seen:
                    raise InvalidArgument(f"actions[{i}].id", f"duplicate action id {a.id!r}")
                seen.add(a.id)
            action_ids = [a.id for a in actions]
            lines = [action_line(a.id, a.features) for a in actions]
            actions_json = dumps([[a.id, namespaces_to_json(a.features)] for a in actions])
        else:
            if not rt.action_ids:
                raise InvalidArgument("actions", f"empty, and policy {policy!r} has no configured actions")
            action_ids, lines, actions_json = rt.action_ids, rt.action_lines, rt.actions_json
        n_slots = slots or rt.spec.slots
        if rt.spec.kind == "cb" and n_slots != 1:
            raise InvalidArgument("slots", f"policy {policy!r} is a cb policy: one slot, got {n_slots}")
        if n_slots > len(action_ids):
            raise InvalidArgument("slots", f"{n_slots} slots but only {len(action_ids)} actions")
        if event_id:
            if len(event_id) > MAX_ID_LENGTH:
                raise InvalidArgument("event_id", f"longer than {MAX_ID_LENGTH} characters")
            if event_id in self.joiner:
                raise InvalidArgument("event_id", f"event id {event_id!r} is already used")
        else:
            event_id = self._next_event_id()
        backlog = self.learner.backlog(policy, rt.enqueued)
        if self.joiner.room() - backlog <= 0:
            raise Overloaded(f"{len(self.joiner)} decisions pending and {backlog} joined events not yet learned "
                             f"(limits.max_pending_joins={self.limits.max_pending_joins}); retry with backoff")
        if self.writer.room() <= 0:
            raise Overloaded(f"write queue full (limits.max_write_queue_rows={self.limits.max_write_queue_rows})")

        shared = shared_line(context)
        per_slot = rt.serving.predict_one(shared, lines, n_slots)
        drawn = draw_slots(per_slot, self._rng)
        greedy = max(range(len(per_slot[0])), key=per_slot[0].__getitem__)
        explored = drawn[0][0] != greedy
        now = time.time()
        deadline = now + rt.spec.join_window_seconds
        chosen = [(idx, p) for idx, p, _ in drawn]
        self.joiner.add(PendingDecision(
            event_id=event_id, policy=policy, lineage=rt.lineage, created_at=now, deadline=deadline,
            shared=shared, actions=lines, action_ids=action_ids, chosen=chosen, explored=explored,
            aggregation=rt.spec.aggregation, default_reward=rt.spec.default_reward,
        ))
        self.writer.append("decisions", [DecisionRow(
            event_id, policy, rt.lineage, now, deadline, dumps(namespaces_to_json(context)), actions_json,
            _float_lists([d for _, _, d in drawn]), repr([idx for idx, _ in chosen]), explored, rt.model_version,
        )])
        rt.count("decisions")
        self.metrics.child(self.metrics.decisions, policy).inc()
        if explored:
            self.metrics.child(self.metrics.explored, policy).inc()
        return Decision(
            event_id=event_id, action_ids=action_ids,
            slots=[SlotResult(idx, p, d) for idx, p, d in drawn], model_version=rt.model_version,
        )

    # ------------------------------------------------------------------ rewards
    async def report_rewards(self, rewards: Sequence[RewardInput]) -> list[RewardResult]:
        """Classifies, commits and joins rewards; returns once every accepted one is durable."""
        if len(rewards) > self.limits.max_reward_batch:
            raise InvalidArgument("events", f"{len(rewards)} events in one batch, more than "
                                            f"limits.max_reward_batch={self.limits.max_reward_batch}")
        if self.writer.room() < len(rewards):
            raise Overloaded(f"write queue full (limits.max_write_queue_rows={self.limits.max_write_queue_rows});"
                             " retry with backoff")
        now = time.time()
        results: list[RewardResult | None] = [None] * len(rewards)
        rows: list[RewardRow] = []
        close_now: list[str] = []
        lookups: list[int] = []
        counts: dict[tuple[str, str], int] = {}
        for i, r in enumerate(rewards):
            problem = _validate_reward(r)
            if problem:
                results[i] = RewardResult(Outcome.INVALID, problem)
                counts[("", Outcome.INVALID)] = counts.get(("", Outcome.INVALID), 0) + 1
                continue
            outcome, policy = self.joiner.reward(r.event_id, r.reward_id, r.value, now, r.oracle_best,
                                                 r.oracle_chosen)
            if outcome == Outcome.LOOKUP:
                lookups.append(i)
                continue
            counts[(policy, outcome)] = counts.get((policy, outcome), 0) + 1
            results[i] = RewardResult(outcome)
            if outcome in (Outcome.ACCEPTED, Outcome.LATE):
                rows.append(self._reward_row(r, outcome, now))
                if outcome == Outcome.ACCEPTED and self.policies[policy].spec.aggregation == "first":
                    close_now.append(r.event_id)
        for (policy, outcome), n in counts.items():
            self._count_reward(policy, outcome, n)
        # The reward rows go to the log before the joins they cause.
        fut = self.writer.submit("rewards", rows, force=True) if rows else self.writer.barrier()
        for event_id in close_now:
            self.joiner.close_now(event_id, now)
        self._flush_joined()
        if lookups:
            await self._classify_from_log(rewards, lookups, results, now)
        await asyncio.wrap_future(fut)
        return [r if r is not None else RewardResult(Outcome.INVALID, "internal") for r in results]

    async def _classify_from_log(
        self, rewards: Sequence[RewardInput], lookups: list[int], results: list[RewardResult | None], now: float
    ) -> None:
        keys = [(rewards[i].event_id, rewards[i].reward_id) for i in lookups]
        # Rows submitted before this look-up must be visible to it.
        await asyncio.wrap_future(self.writer.barrier())
        decisions, stored = await asyncio.to_thread(self.store.lookup_events, keys)
        rows = []
        for i, key in zip(lookups, keys, strict=True):
            found = decisions.get(key[0])
            if found is None:
                results[i] = RewardResult(Outcome.UNKNOWN, f"event_id: no decision {key[0]!r}")
                self._count_reward("", Outcome.UNKNOWN)
            elif key in stored:
                results[i] = RewardResult(Outcome.DUPLICATE)
                self._count_reward(found[0], Outcome.DUPLICATE)
            else:
                stored.add(key)
                outcome = Outcome.ACCEPTED if now <= found[1] else Outcome.LATE
                results[i] = RewardResult(outcome)
                self._count_reward(found[0], outcome)
                rows.append(self._reward_row(rewards[i], outcome, now))
        if rows:
            await asyncio.wrap_future(self.writer.submit("rewards", rows, force=True))

    def _count_reward(self, policy: str, outcome: str, n: int = 1) -> None:
        self.metrics.child(self.metrics.rewards, policy, outcome).inc(n)
        rt = self.policies.get(policy)
        if rt is not None:
            rt.count("rewards_" + outcome, n)
        else:
            self._unattributed[outcome] = self._unattributed.get(outcome, 0) + n

    @staticmethod
    def _reward_row(r: RewardInput, outcome: str, now: float) -> RewardRow:
        return RewardRow(r.event_id, r.reward_id, r.value, dumps(r.engaged) if r.engaged else None, r.oracle_best,
                         r.oracle_chosen, outcome, now)

    # ------------------------------------------------------------------ admin
    def _info(self, rt: PolicyRuntime) -> PolicyInfo:
        return PolicyInfo(rt.spec, rt.revision, rt.lineage, rt.model_version, rt.created_at, rt.updated_at)

    def list_policies(self) -> list[PolicyInfo]:
        return [self._info(rt) for _, rt in sorted(self.policies.items())]

    def get_policy(self, name: str) -> PolicyInfo:
        return self._info(self.policy(name))

    async def create_policy(self, spec: PolicySpec) -> PolicyInfo:
        if spec.name in self.policies:
            raise AlreadyExists(f"spec.name: policy {spec.name!r} exists already", field="spec.name")
        now = time.time()
        start = self.joiner.next_seq
        await asyncio.to_thread(self.store.insert_policy, spec, 1, 1, start, now)
        self._install(spec, revision=1, lineage=1, start_seq=start, created_at=now, now=now)
        return self.get_policy(spec.name)

    async def update_policy(self, spec: PolicySpec) -> tuple[PolicyInfo, bool]:
        rt = self.policy(spec.name)
        reset = spec.learning_params() != rt.spec.learning_params()
        now = time.time()
        lineage = rt.lineage + 1 if reset else rt.lineage
        start = self.joiner.next_seq if reset else rt.lineage_start_seq
        await asyncio.to_thread(self.store.update_policy, spec, rt.revision + 1, lineage, start, now)
        if reset:
            self._install(spec, revision=rt.revision + 1, lineage=lineage, start_seq=start,
                          created_at=rt.created_at, now=now)
        else:
            rt.spec = spec
            rt.revision += 1
            rt.updated_at = now
            rt.set_actions(spec.actions)
        return self.get_policy(spec.name), reset

    def _install(self, spec: PolicySpec, revision: int, lineage: int, start_seq: int, created_at: float,
                 now: float) -> None:
        model = PolicyModel.create(spec)
        old = self.policies.get(spec.name)
        rt = PolicyRuntime(
            spec=spec, revision=revision, lineage=lineage, lineage_start_seq=start_seq, created_at=created_at,
            updated_at=now, serving=PolicyModel.from_bytes(model.to_bytes(), spec.kind), model_version=0,
            window=RewardWindow(self.settings.metrics_window),
        )
        if old is not None:  # counters span lineages; the backlog must too
            rt.enqueued, rt.counts = old.enqueued, old.counts
        self._register(rt)
        self.learner.set_state(LearnerState(spec.name, lineage, model, start_seq - 1, 0, last_snapshot_at=now))

    def _register(self, rt: PolicyRuntime) -> None:
        self.metrics.watch_policy(rt.spec.name, rt.window.stats)
        self.policies[rt.spec.name] = rt

    async def snapshot(self, name: str) -> SnapshotInfo:
        self.policy(name)
        return await asyncio.wrap_future(self.learner.snapshot(name))

    async def stats(self, name: str) -> dict[str, float]:
        rt = self.policy(name)
        last_snapshot = await asyncio.to_thread(self.store.latest_snapshot_id, name)
        w = rt.window.stats()
        learned = self.learner.learned.get(name, 0)
        return {
            "decisions": rt.counts.get("decisions", 0),
            "rewards_accepted": rt.counts.get("rewards_accepted", 0),
            "rewards_duplicate": rt.counts.get("rewards_duplicate", 0),
            "rewards_late": rt.counts.get("rewards_late", 0),
            # Unknown and invalid rewards name no policy they could be counted under.
            "rewards_unknown": self._unattributed.get(Outcome.UNKNOWN, 0),
            "rewards_invalid": self._unattributed.get(Outcome.INVALID, 0),
            "joined": rt.counts.get("joined", 0),
            "joined_default": rt.counts.get("joined_default", 0),
            "learned": learned,
            "model_version": rt.model_version,
            "pending_joins": len(self.joiner),
            "mean_reward": w["mean_reward"],
            "estimated_regret": w["estimated_regret"],
            "true_regret_total": rt.true_regret_total,
            "exploration_share": w["exploration_share"],
            "learner_lag_seconds": rt.last_lag_seconds,
            "learner_lag_events": self.learner.backlog(name, rt.enqueued),
            "last_snapshot_id": last_snapshot,
        }


