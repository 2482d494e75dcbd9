"""Decisions: a policy draws for a context (or a retrieval policy draws a plan and runs it); every
decision is logged with its probabilities and waits in the joiner for its rewards."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ltrr_server.bounds import ID_CHARS, MAX_PAGE_SIZE, MAX_SLOTS, NAME_CHARS, PLAN_ENTRIES
from ltrr_server.config import ActionSpec, Limits, check_action_ids
from ltrr_server.core.policies import PolicyBook
from ltrr_server.errors import FailedPrecondition, InvalidArgument, Overloaded, Unavailable
from ltrr_server.features import Namespaces, action_line, actions_to_json, shared_line
from ltrr_server.learner.learner import Learner
from ltrr_server.log.joiner import Joiner, PendingDecision
from ltrr_server.log.rows import ActionSetRow, DecisionRecord
from ltrr_server.log.store import EventLogStore
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import finite_probabilities
from ltrr_server.policy.runtime import PolicyRuntime, draw_slots
from ltrr_server.ranking.ranking import MODEL, ORDERS, RANKER, Page, Ranking
from ltrr_server.retrieval.retriever import ActionSet, RetrievalResult, Retriever
from ltrr_server.strategies.base import Query
from ltrr_server.tenancy import INSIDE_CHARS
from ltrr_server.tracing import NO_TRACER, Tracer, record, recording, until_done

# A named tuple's own constructor is a Python function; ``tuple.__new__`` builds the same
# instance in C, in about half the time (it does not count the fields: the tests read every
# kind of row back from the log). One decision row is built per decision.
_row = tuple.__new__


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
    # The checked query and the hints the policy saw (namespace h): the ranker reads them too.
    query: Query | None = None
    hints: Namespaces | None = None


@dataclass
class Search:
    retrieval: Retrieval
    page: Page


class Decisions:
    """Decide and Retrieve. ``retriever`` is attached once the catalog and its indexes are loaded."""

    def __init__(
        self, policies: PolicyBook, joiner: Joiner, writer: EventLogWriter, learner: Learner,
        store: EventLogStore, metrics: Metrics, limits: Limits, retrieval_policies: Sequence[str] = (),
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self._policies = policies
        self._tracer = tracer
        self._joiner = joiner
        self._writer = writer
        self._learner = learner
        self._store = store
        self._metrics = metrics
        self._limits = limits
        self._retrieval_policies = set(retrieval_policies)
        self.retriever: Retriever | None = None
        self.ranking: Ranking | None = None
        # Why retrieval cannot serve although it is configured (its data folder is another database's).
        self.retrieval_problem: str | None = None
        self._rng = random.Random()
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_counter = 0
        self._logged_action_sets: set[str] = set()

    def _next_event_id(self) -> str:
        """A random per-process prefix and a counter: unique across restarts, and no system call
        per decision (``uuid4`` reads the OS entropy pool every time)."""
        self._event_counter += 1
        return f"{self._event_prefix}{self._event_counter:016x}"

    async def check_new_event_id(self, event_id: str) -> None:
        """A caller-chosen event id must be new, also to the log (rows with a used id are not stored)."""
        if event_id and event_id not in self._joiner and len(event_id) <= ID_CHARS:
            found, _ = await asyncio.to_thread(self._store.lookup_events, [(event_id, "")])
            if found:
                raise InvalidArgument("event_id", f"event id {event_id!r} is already used")

    def decide(
        self, policy: str, context: Namespaces, actions: Sequence[ActionSpec] | None = None,
        event_id: str = "", slots: int = 0, baseline: str = "",
    ) -> Decision:
        """Chooses for one context; logs the decision with its probabilities. ``baseline`` is the
        caller's own choice: a policy in apprentice mode answers it (empty: the first action)."""
        rt = self._policies.get(policy)
        if len(baseline) > NAME_CHARS:
            raise InvalidArgument("baseline_action_id", f"longer than {NAME_CHARS} characters")
        if actions:
            if len(actions) > self._limits.max_actions:
                raise InvalidArgument("actions", f"{len(actions)} actions, more than limits.max_actions="
                                                 f"{self._limits.max_actions}")
            action_ids = [a.id for a in actions]
            check_action_ids(action_ids, "actions")
            lines = [action_line(a.id, a.features) for a in actions]
            actions_json = actions_to_json((a.id, a.features) for a in actions)
        else:
            if not rt.action_ids:
                raise InvalidArgument("actions", f"empty, and policy {policy!r} has no configured actions")
            action_ids, lines, actions_json = rt.action_ids, rt.action_lines, rt.actions_json
        if slots > MAX_SLOTS:
            raise InvalidArgument("slots", f"must be at most {MAX_SLOTS}, got {slots}")
        n_slots = slots or rt.spec.slots
        if rt.spec.kind == "cb" and n_slots != 1:
            raise InvalidArgument("slots", f"policy {policy!r} is a cb policy: one slot, got {n_slots}")
        if n_slots > len(action_ids):
            raise InvalidArgument("slots", f"{n_slots} slots but only {len(action_ids)} actions")
        if baseline and baseline not in action_ids:
            raise InvalidArgument("baseline_action_id", f"{baseline!r} is not one of the decision's actions")
        apprentice = (action_ids.index(baseline) if baseline else 0) if rt.spec.mode == "apprentice" else None
        decision, _ = self._decide(rt, context, action_ids, lines, actions_json, event_id, n_slots,
                                   apprentice=apprentice)
        self._trace_commit()
        return decision

    def _trace_commit(self) -> None:
        """In a traced call: a "commit" span from now (its rows are queued) to their commit."""
        parent = recording()
        if parent is not None:
            until_done(self._tracer, "commit", parent, self._writer.barrier())

    def _decide(
        self, rt: PolicyRuntime, context: Namespaces, action_ids: list[str], lines: list[str], actions_json: str,
        event_id: str, n_slots: int, fixed: int | None = None, extra_context: Namespaces | None = None,
        apprentice: int | None = None,
    ) -> tuple[Decision, PendingDecision]:
        """Draws (or, with ``fixed``, takes) an action, logs the decision and waits for its rewards.

        ``apprentice``: the caller's baseline action, served with probability 1 and learned; the
        decision counts as explored when the policy's own greedy choice differs (its disagreement)."""
        policy = rt.spec.name
        started_ns = time.time_ns()
        if event_id:
            if len(event_id) > ID_CHARS:
                raise InvalidArgument("event_id", f"longer than {ID_CHARS} characters")
            if "\x00" in event_id:
                raise InvalidArgument("event_id", "contains a NUL character")
            if event_id in self._joiner:
                raise InvalidArgument("event_id", f"event id {event_id!r} is already used")
        else:
            event_id = self._next_event_id()
        backlog = self._learner.backlog(policy)
        if self._joiner.room() - backlog <= 0:
            raise Overloaded(f"{len(self._joiner)} decisions pending and {backlog} joined events not yet learned "
                             f"(limits.max_pending_joins={self._limits.max_pending_joins}); retry with backoff")
        if self._writer.room() <= 0:
            raise Overloaded(f"write queue full (limits.max_write_queue_rows={self._limits.max_write_queue_rows})")

        full_context = extra_context + context if extra_context else context
        shared = shared_line(full_context)
        if apprentice is not None:
            per_slot = rt.serving.predict_one(shared, lines, n_slots)
            greedy = max(range(len(per_slot[0])), key=per_slot[0].__getitem__)
            one_hot = [0.0] * len(lines)
            one_hot[apprentice] = 1.0
            drawn, explored = [(apprentice, 1.0, one_hot)], apprentice != greedy
        elif fixed is None:
            model = rt.serving

            def slot_probs(slot: int, taken: list[int]) -> list[float]:
                probs = (model.predict_one(shared, lines)[0] if model.frame.kind == "cb"
                         else model.predict_slot(shared, lines, slot, taken))
                if not finite_probabilities([probs]):
                    raise Unavailable(f"policy {policy!r} cannot decide: its model gave NaN or infinite probabilities "
                                      f"(version {rt.model_version}); the learner replaces a model that turns so with "
                                      f"its last finite one (ltrr_models_rejected)")
                return probs

            drawn = draw_slots(slot_probs, n_slots, self._rng)
            first = drawn[0][2]
            explored = drawn[0][0] != max(range(len(first)), key=first.__getitem__)
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
        self._joiner.add(pending)
        self._writer.append("decisions", [_row(DecisionRecord, (
            event_id, policy, rt.lineage, now, deadline, full_context, actions_json,
            [d for _, _, d in drawn], [idx for idx, _ in chosen], explored, rt.model_version, fixed is None,
        ))])
        # Also the Prometheus counters: read from the policy's counts at scrape time.
        rt.count("decisions")
        if not explored:
            rt.count("greedy")
        elif apprentice is None:  # an apprentice's disagreement with its baseline is no exploration
            rt.count("explored")
        decision = Decision(
            event_id=event_id, action_ids=action_ids,
            slots=[SlotResult(idx, p, d) for idx, p, d in drawn], model_version=rt.model_version,
        )
        parent = recording()
        if parent is not None:
            pending.trace = parent  # its learning becomes a span of this call's trace
            record(self._tracer, "decide", parent, started_ns, time.time_ns(), {
                "ltrr.policy": policy, "ltrr.lineage": rt.lineage, "ltrr.model_version": rt.model_version,
                "ltrr.event_id": event_id, "ltrr.action": action_ids[chosen[0][0]],
                "ltrr.probability": chosen[0][1], "ltrr.explored": explored})
        return decision, pending

    # ------------------------------------------------------------------ retrieval
    def _retrieval_policy(self, name: str) -> tuple[PolicyRuntime, Retriever]:
        rt = self._policies.get(name)
        if self.retrieval_problem is not None:
            raise Unavailable(f"retrieval cannot serve: {self.retrieval_problem}")
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
            self._writer.append("action_sets", [ActionSetRow(aset.key, aset.json, time.time())])
            self._logged_action_sets.add(aset.key)
        return "#" + aset.key

    async def retrieve(
        self, policy: str, query: str, context: Namespaces, embedding: Sequence[float] = (), event_id: str = "",
        fixed_plan: dict[str, int] | None = None,
    ) -> Retrieval:
        """The policy picks a plan for the query; its strategies run; the union comes back, fused."""
        retrieval, _ = await self._retrieve(policy, query, context, embedding, event_id, fixed_plan)
        self._trace_commit()
        return retrieval

    async def _retrieve(
        self, policy: str, query: str, context: Namespaces, embedding: Sequence[float], event_id: str,
        fixed_plan: dict[str, int] | None,
    ) -> tuple[Retrieval, PendingDecision]:
        rt, retriever = self._retrieval_policy(policy)
        q = retriever.prepare(query, embedding)
        if fixed_plan:
            if len(fixed_plan) > PLAN_ENTRIES:
                raise InvalidArgument("fixed_plan", f"{len(fixed_plan)} entries, more than {PLAN_ENTRIES}")
            for name in fixed_plan:
                if len(name) > ID_CHARS:
                    raise InvalidArgument("fixed_plan", f"a strategy name longer than {ID_CHARS} characters")
        fixed = retriever.fixed_plan_index(fixed_plan) if fixed_plan else None
        aset = retriever.action_set(time.time())
        hints = retriever.query_features(q)
        decision, pending = self._decide(
            rt, context, aset.ids, aset.lines, self._log_action_set(aset), event_id, 1, fixed=fixed,
            extra_context=hints,
        )
        plan = retriever.plans[decision.slots[0].chosen]
        result = await retriever.run(plan, q, learn=fixed is None)
        if (parent := recording()) is not None:
            for run in result.runs:  # on worker threads: recorded from their own timings
                record(self._tracer, f"strategy {run.strategy}", parent, run.started_ns,
                       run.started_ns + int(run.seconds * 1e9),
                       {"ltrr.strategy": run.strategy, "ltrr.budget": run.budget, "ltrr.hits": len(run.hits)},
                       run.error)
        # No reward can arrive before the caller has the event id, so attaching the record now is safe.
        pending.retrieval = result.record
        pending.default_reward = retriever.default_reward(result.record)
        self._metrics.child(self._metrics.plan_choices, policy, plan.id, "yes" if fixed is not None else "no").inc()
        self._metrics.child(self._metrics.retrieval_candidates, policy).observe(len(result))
        return Retrieval(decision, result, decision.slots[0].probability, fixed is not None, q, hints), pending

    async def search(
        self, policy: str, query: str, context: Namespaces, user: str = "", page_size: int = 0,
        embedding: Sequence[float] = (), event_id: str = "", fixed_plan: dict[str, int] | None = None,
        order: str = RANKER, model: str = "",
    ) -> Search:
        """Retrieve, then the ranker orders the union into the page; one event covers both. A fixed
        plan is not learned, but the ranker's page on its candidates is (only ``order`` other than
        the ranker's makes a page a baseline)."""
        if len(user) > NAME_CHARS:
            raise InvalidArgument("user_id", f"longer than {NAME_CHARS} characters")
        if "\x00" in user:
            raise InvalidArgument("user_id", "contains a NUL character")
        if page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}, got {page_size}")
        if order not in ORDERS:
            raise InvalidArgument("order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
        if order == MODEL and not model:
            raise InvalidArgument("model", "is empty: PAGE_ORDER_MODEL names a trained ranker")
        if len(model) > INSIDE_CHARS:
            raise InvalidArgument("model", f"longer than {ID_CHARS} characters")
        if self.ranking is None:
            self._retrieval_policy(policy)  # says why retrieval cannot serve
            raise FailedPrecondition("ranking is not available: the catalog is not loaded", field="policy")
        ranking = self.ranking
        if order == MODEL:
            ranking.live_model(model)  # refused before anything is logged
        r, _ = await self._retrieve(policy, query, context, embedding, event_id, fixed_plan)
        assert r.query is not None and r.hints is not None
        res = r.result
        started_ns = time.time_ns()
        page = ranking.rank(policy, r.decision.event_id, res.record.positions, res.fused_scores, res.provenance,
                            r.query.normalized, r.hints, context, user, page_size, order, learn=True, model=model)
        # No reward can arrive before the caller has the event id: attaching the page now is safe.
        res.record.page = page.record
        self._writer.append("pages", [page.row])
        if (parent := recording()) is not None:
            record(self._tracer, "rank", parent, started_ns, time.time_ns(), {
                "ltrr.ranker": page.ranker, "ltrr.ranker_version": page.version, "ltrr.order": order,
                "ltrr.candidates": len(res.record.positions), "ltrr.page_size": len(page.order),
                "ltrr.page_probability": page.probability})
        self._trace_commit()
        return Search(r, page)
