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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from ltrr_server import first_start
from ltrr_server.catalog.catalog import normalize
from ltrr_server.config import ActionSpec, PolicySpec, Settings
from ltrr_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Overloaded
from ltrr_server.features import (
    Namespaces,
    action_line,
    dumps,
    namespaces_from_json,
    namespaces_to_json,
    shared_line,
)
from ltrr_server.heap import release_free_memory
from ltrr_server.learner.learner import Learner, LearnerState, SnapshotInfo
from ltrr_server.log import db
from ltrr_server.log.joiner import JoinedEvent, Joiner, Outcome, PendingDecision
from ltrr_server.log.rows import ActionSetRow, DecisionRecord, JoinedRow, RewardRow
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel
from ltrr_server.policy.runtime import PolicyRuntime, draw_slots
from ltrr_server.regret import RewardWindow
from ltrr_server.retrieval.retriever import ActionSet, RetrievalResult, Retriever
from ltrr_server.xmr.live import LiveModels
from ltrr_server.xmr.model import Ranked, XmrModel
from ltrr_server.xmr.registry import ModelRegistry, load_model
from ltrr_server.xmr.train import compare

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 64
MAX_REWARD_ID_LENGTH = 128
MAX_ENGAGED_ITEMS = 1000
# XmrPredict requests with at most this many queries predict on the event loop (at most about
# 5 ms of it here); bigger ones in one call on a worker thread, where PECOS's C++ runs without the
# GIL and the loop stays free (the hop costs about 6 µs a query at 256: 1.3x raw instead of 1.25x).
# One call, not chunks on the loop: PECOS's predict has a large fixed cost per call (256 queries
# in chunks of 64 took 1.4x as long as in one call).
INLINE_PREDICT_QUERIES = 64


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
class Retrieval:
    decision: Decision
    result: RetrievalResult
    probability: float
    fixed: bool


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


@dataclass
class PolicyInfo:
    spec: PolicySpec
    revision: int
    lineage: int
    model_version: int
    created_at: float
    updated_at: float


# A named tuple's own constructor is a Python function; ``tuple.__new__`` builds the same
# instance in C, in about half the time (it does not count the fields: the tests read every
# kind of row back from the log). Rows are built once per decision, reward and join.
_row = tuple.__new__
# A join's log row read off the joined event in C, whose fields are named as the row's: a plain
# tuple in JoinedRow's field order (the writer reads rows by position).
_joined_row: Callable[[JoinedEvent], tuple[Any, ...]] = attrgetter(*JoinedRow._fields)


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
    if r.oracle_best is not None and not math.isfinite(r.oracle_best):
        return f"oracle_best_value: must be finite, got {r.oracle_best}"
    if r.oracle_chosen is not None and not math.isfinite(r.oracle_chosen):
        return f"oracle_chosen_value: must be finite, got {r.oracle_chosen}"
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
            process=settings.writer_process,
        )
        self.learner = Learner(
            self.writer, metrics, self._on_publish, settings.publish_interval_seconds,
            settings.snapshot_interval_seconds, self.store.latest_snapshot_id, nice=settings.learner_nice,
        )
        self.joiner = Joiner(settings.limits.max_pending_joins, 1, self._on_joined,
                             closed_memory=settings.limits.max_recent_joins)
        # Joins since the last flush; their rows are written then.
        self._joined_all: list[JoinedEvent] = []
        self._unattributed: dict[str, int] = {}
        self._joined_events: list[JoinedEvent] = []
        # Joins since the last flush, by (policy, source, learned).
        self._joined_counts: dict[tuple[str, str, bool], int] = {}
        self.policies: dict[str, PolicyRuntime] = {}
        self._rng = random.Random()
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_counter = 0
        self._expiry_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self.retriever: Retriever | None = None
        self.registry = ModelRegistry(self.engine, settings.model_dir)
        self.live_models = LiveModels(self.registry)
        # Autocomplete sessions kept by the server: session id -> recent queries, bounded LRU.
        self._sessions: OrderedDict[str, list[str]] = OrderedDict()
        self._retrieval_policies = set(settings.retrieval.policies)
        self._logged_action_sets: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Migrates the schema, loads policies, restores models (snapshot + replay), recovers joins."""
        # The writer process imports its driver while the rest of the start-up runs.
        self.writer.launch()
        db.migrate(self.engine)
        if first_start.needs_work(self.settings, self.engine, self.registry):
            first_start.run(self.settings)
        self.live_models.load_all()
        if self.settings.retrieval.enabled:
            self.retriever = Retriever(self.settings.retrieval, self.engine, self.metrics, live_models=self.live_models)
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
        # What training and ingest left behind goes back to the OS, not into the server's RSS.
        release_free_memory()

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
        self._flush_joined()
        return len(rows)

    async def start_background(self) -> None:
        self._expiry_task = asyncio.create_task(self._expire_loop())
        if self.retriever is not None:
            self._flush_task = asyncio.create_task(self._flush_loop(self.retriever))

    async def _flush_loop(self, retriever: Retriever) -> None:
        """Persists what strategies learned from engagements (memory statistics), once a second."""
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(retriever.flush)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.joiner.expire(time.time())
            self._flush_joined()
            self.metrics.pending_joins.set(len(self.joiner))

    async def aclose(self) -> None:
        for task in (self._expiry_task, self._flush_task):
            if task is not None:
                task.cancel()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Learns what is queued, snapshots every changed policy, commits everything."""
        self.learner.stop()
        if self.retriever is not None:
            self.retriever.close()
        self.writer.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ callbacks
    def _flush_joined(self) -> None:
        """Queues the joined rows of the last batch of joins in one go (one queue entry, not one per row),
        and counts them: per batch, since a labelled counter's update costs more than a join."""
        if self._joined_all:
            joined, self._joined_all = self._joined_all, []
            self.writer.append("joined", list(map(_joined_row, joined)))
            for rt in self.policies.values():
                if rt.window_batch:
                    rt.window.add_many(rt.window_batch)
                    rt.window_batch = []
            self.learner.put_many(self._joined_events)
            self._joined_events = []
            counts, self._joined_counts = self._joined_counts, {}
            for (policy, source, learned), n in counts.items():
                self.metrics.child(self.metrics.joined, policy, source).inc(n)
                runtime = self.policies.get(policy)
                if runtime is None:
                    continue
                if not learned:
                    runtime.count("joined_unlearned", n)
                    continue
                runtime.count("joined", n)
                runtime.enqueued += n
                if source == "default":
                    runtime.count("joined_default", n)

    def _on_joined(self, events: list[JoinedEvent]) -> None:
        """Takes a list of joins from the joiner: credits retrieval plans, counts them, queues what is
        learned. Their log rows are made at the flush, in one pass."""
        self._joined_all.extend(events)
        retrieval_policies, policies = self._retrieval_policies, self.policies
        counts, learned = self._joined_counts, self._joined_events
        for ev in events:
            if ev.policy in retrieval_policies:
                if ev.retrieval is not None and self.retriever is not None:
                    self.retriever.on_joined(ev.policy, ev.retrieval)
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
                self.metrics.child(self.metrics.true_regret, ev.policy).inc(max(regret, 0.0))
            idx, prob = ev.chosen[0]
            rt.window_batch.append((ev.action_ids[idx], prob, ev.reward, ev.explored, regret))

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
        decision, _ = self._decide(rt, context, action_ids, lines, actions_json, event_id, n_slots)
        return decision

    def _decide(
        self, rt: PolicyRuntime, context: Namespaces, action_ids: list[str], lines: list[str], actions_json: str,
        event_id: str, n_slots: int, fixed: int | None = None, extra_context: Namespaces | None = None,
    ) -> tuple[Decision, PendingDecision]:
        """Draws (or, with ``fixed``, takes) an action, logs the decision and waits for its rewards."""
        policy = rt.spec.name
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

        full_context = extra_context + context if extra_context else context
        shared = shared_line(full_context)
        if fixed is None:
            per_slot = rt.serving.predict_one(shared, lines, n_slots)
            drawn = draw_slots(per_slot, self._rng)
            greedy = max(range(len(per_slot[0])), key=per_slot[0].__getitem__)
            explored = drawn[0][0] != greedy
        else:
            one_hot = [0.0] * len(lines)
            one_hot[fixed] = 1.0
            drawn, explored = [(fixed, 1.0, one_hot)], False
        now = time.time()
        deadline = now + rt.spec.join_window_seconds
        chosen = [(idx, p) for idx, p, _ in drawn]
        pending = PendingDecision(
            event_id=event_id, policy=policy, lineage=rt.lineage, created_at=now, deadline=deadline,
            shared=shared, actions=lines, action_ids=action_ids, chosen=chosen, explored=explored,
            aggregation=rt.spec.aggregation, default_reward=rt.spec.default_reward, learn=fixed is None,
        )
        self.joiner.add(pending)
        self.writer.append("decisions", [_row(DecisionRecord, (
            event_id, policy, rt.lineage, now, deadline, full_context, actions_json,
            [d for _, _, d in drawn], [idx for idx, _ in chosen], explored, rt.model_version, fixed is None,
        ))])
        # Also the Prometheus counters: read from the policy's counts at scrape time.
        rt.count("decisions")
        if explored:
            rt.count("explored")
        decision = Decision(
            event_id=event_id, action_ids=action_ids,
            slots=[SlotResult(idx, p, d) for idx, p, d in drawn], model_version=rt.model_version,
        )
        return decision, pending

    # ------------------------------------------------------------------ retrieval
    def _retrieval_policy(self, name: str) -> tuple[PolicyRuntime, Retriever]:
        rt = self.policy(name)
        if self.retriever is None:
            raise FailedPrecondition("retrieval is not configured: the server has no [retrieval] strategies",
                                     field="policy")
        if name not in self._retrieval_policies:
            raise FailedPrecondition(f"policy {name!r} is not a retrieval policy (retrieval.policies)",
                                     field="policy")
        return rt, self.retriever

    def _log_action_set(self, aset: ActionSet) -> str:
        """Logs a shared action set once; decisions refer to it as "#key"."""
        if aset.key not in self._logged_action_sets:
            self.writer.append("action_sets", [ActionSetRow(aset.key, aset.json, time.time())])
            self._logged_action_sets.add(aset.key)
        return "#" + aset.key

    async def retrieve(
        self, policy: str, query: str, context: Namespaces, embedding: Sequence[float] = (), event_id: str = "",
        fixed_plan: dict[str, int] | None = None,
    ) -> Retrieval:
        """The policy picks a plan for the query; its strategies run; the union comes back, fused."""
        rt, retriever = self._retrieval_policy(policy)
        q = retriever.prepare(query, embedding)
        fixed = retriever.fixed_plan_index(fixed_plan) if fixed_plan else None
        aset = retriever.action_set(time.time())
        decision, pending = self._decide(
            rt, context, aset.ids, aset.lines, self._log_action_set(aset), event_id, 1, fixed=fixed,
            extra_context=retriever.query_features(q),
        )
        plan = retriever.plans[decision.slots[0].chosen]
        result = await retriever.run(plan, q, learn=fixed is None)
        # No reward can arrive before the caller has the event id, so attaching the record now is safe.
        pending.retrieval = result.record
        pending.default_reward = retriever.default_reward(result.record)
        self.metrics.child(self.metrics.plan_choices, policy, plan.id, "yes" if fixed is not None else "no").inc()
        self.metrics.child(self.metrics.retrieval_candidates, policy).observe(len(result))
        return Retrieval(decision, result, decision.slots[0].probability, fixed is not None)

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
        # Locals for what every reward touches: this loop runs once per reward.
        retriever, joiner_get, joiner_reward = self.retriever, self.joiner.get, self.joiner.reward
        accepted, late = Outcome.ACCEPTED, Outcome.LATE
        join_at_first = {name for name, rt in self.policies.items() if rt.spec.aggregation == "first"}
        for i, r in enumerate(rewards):
            problem = _validate_reward(r)
            if problem:
                results[i] = RewardResult(Outcome.INVALID, problem)
                counts[("", Outcome.INVALID)] = counts.get(("", Outcome.INVALID), 0) + 1
                continue
            event_id, value = r.event_id, r.value
            pending = joiner_get(event_id) if retriever is not None else None
            engaged: list[int] | None = None
            if pending is not None and pending.retrieval is not None:
                # A retrieval plan's reward comes from the engaged items, not from the caller's value.
                assert retriever is not None
                engaged = retriever.engaged_positions(r.engaged)
                value = retriever.reward_value(pending.retrieval, engaged)
            outcome, policy = joiner_reward(event_id, r.reward_id, value, now, r.oracle_best, r.oracle_chosen)
            if engaged and outcome == accepted and pending is not None:
                rec = pending.retrieval
                rec.engaged = engaged if rec.engaged is None else rec.engaged + engaged
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
        fut = self.writer.submit("rewards", rows, force=True) if rows else self.writer.barrier()
        self.joiner.close_now(close_now, now)
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
                results[i] = _RESULTS[Outcome.DUPLICATE]
                self._count_reward(found[0], Outcome.DUPLICATE)
            else:
                stored.add(key)
                outcome = Outcome.ACCEPTED if now <= found[1] else Outcome.LATE
                results[i] = _RESULTS[outcome]
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
        return _row(RewardRow, (r.event_id, r.reward_id, r.value, dumps(r.engaged) if r.engaged else None,
                                r.oracle_best, r.oracle_chosen, outcome, now))

    # ------------------------------------------------------------------ models
    async def xmr_predict(self, model: str, queries: Sequence[str], k: int = 10, beam_size: int = 0
                          ) -> tuple[int, XmrModel, Ranked]:
        """Top-k labels per query from the model's live version: (version, that model, its ranked labels)."""
        if not model:
            raise InvalidArgument("model", "is empty")
        if not queries:
            raise InvalidArgument("queries", "is empty")
        if len(queries) > self.limits.max_predict_queries:
            raise InvalidArgument("queries", f"{len(queries)} queries, more than "
                                             f"limits.max_predict_queries={self.limits.max_predict_queries}")
        texts = []
        for i, q in enumerate(queries):
            text = normalize(q)
            if not text:
                raise InvalidArgument(f"queries[{i}]", "has no letters or digits")
            texts.append(text)
        if not 0 <= k <= 1000:
            raise InvalidArgument("k", f"must be in [1, 1000], got {k}")
        if beam_size > 1000:
            raise InvalidArgument("beam_size", f"must be at most 1000, got {beam_size}")
        version, m = self.live_models.get(model)
        if len(texts) <= INLINE_PREDICT_QUERIES:
            # A query costs 0.06-0.4 ms: less than the hop to a worker thread and back.
            return version, m, m.predict_ranked(texts, k or 10, beam_size)
        return version, m, await asyncio.to_thread(m.predict_ranked, texts, k or 10, beam_size)

    async def autocomplete(self, model: str, prefix: str, previous: Sequence[str] = (), session_id: str = "",
                           k: int = 10) -> tuple[int, list[tuple[str, float]]]:
        """Completions of ``prefix`` given the session's previous queries (sent, or kept by session id)."""
        from ltrr_server.autocomplete.model import AutocompleteModel

        if not model:
            raise InvalidArgument("model", "is empty")
        if not prefix.strip() or not normalize(prefix):
            raise InvalidArgument("prefix", "is empty (or has no letters or digits)")
        if len(prefix) > self.limits.max_prefix_chars:
            raise InvalidArgument("prefix", f"longer than limits.max_prefix_chars={self.limits.max_prefix_chars}")
        if not 0 <= k <= 100:
            raise InvalidArgument("k", f"must be in [1, 100], got {k}")
        if len(session_id) > MAX_ID_LENGTH:
            raise InvalidArgument("session_id", f"longer than {MAX_ID_LENGTH} characters")
        version, m = self.live_models.get(model, AutocompleteModel)
        if previous:
            history = [normalize(q) for q in previous][-self.limits.max_session_queries:]
            if session_id:
                self._remember(session_id, history)
        else:
            history = self._sessions.get(session_id, []) if session_id else []
        return version, m.complete(history[-1] if history else "", prefix, k or 10)

    def record_query(self, session_id: str, query: str) -> int:
        """Adds a submitted query to a session the server keeps; returns the session's length."""
        if not session_id:
            raise InvalidArgument("session_id", "is empty")
        if len(session_id) > MAX_ID_LENGTH:
            raise InvalidArgument("session_id", f"longer than {MAX_ID_LENGTH} characters")
        text = normalize(query)
        if not text:
            raise InvalidArgument("query", "is empty (or has no letters or digits)")
        history = (self._sessions.get(session_id, []) + [text])[-self.limits.max_session_queries:]
        self._remember(session_id, history)
        return len(history)

    def _remember(self, session_id: str, history: list[str]) -> None:
        self._sessions[session_id] = history
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.limits.max_sessions:  # the least recently used go first
            self._sessions.popitem(last=False)

    async def promote_model(self, name: str, version: int, force: bool) -> dict[str, Any]:
        """Checks a version against the live one on its held-out pairs, then swaps it in."""
        row = await asyncio.to_thread(self.registry.get, name, version)
        if version == 0:
            raise InvalidArgument("version", "is required")
        candidate = await asyncio.to_thread(load_model, row["kind"], Path(row["path"]))
        live = self.live_models.maybe(name)
        # Registry reads stay off the event loop, like every other SQL call here.
        versions = await asyncio.to_thread(self.registry.versions, name)
        previous = next((r["version"] for r in versions if r["live"]), 0)
        figures: dict[str, float] = {}
        if isinstance(candidate, XmrModel):
            figures = await asyncio.to_thread(compare, live, candidate, Path(row["path"]))
        nfr = figures.get("negative_flip_rate", 0.0)
        if live is not None and nfr > self.settings.max_nfr and not force:
            raise FailedPrecondition(
                f"model {name!r} v{version}: negative flip rate {nfr:.4f} against live v{previous} is above "
                f"max_nfr={self.settings.max_nfr} (recall@10 {figures.get('recall_live', 0):.4f} -> "
                f"{figures.get('recall_new', 0):.4f}); retrain with congruent_weight or force", field="version")
        await asyncio.to_thread(self.registry.set_live, name, version, figures | {"forced": force})
        self.live_models.swap(name, version, candidate)
        log.info("model %s: v%d live (was v%d): %s", name, version, previous, figures)
        row = await asyncio.to_thread(self.registry.get, name, version)
        return figures | {"previous_version": previous, "row": row}

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
        self.metrics.watch_policy(rt.spec.name, rt.window.stats, rt.counts)
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


