"""One pass over a policy's joined events that estimates the value of several targets at once.

For every event the reward model (for DR) predicts every action before it learns the event, and
each target gives its probabilities before a learning target learns it: every figure is computed
from what was known before the event, so the estimates stay unbiased (progressive validation).

Per slot: for a multi-slot policy each slot is evaluated as its own decision with the decision's
reward, the logged probability of that slot's action and the target's distribution for the slot.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltrr_server.config import PolicySpec
from ltrr_server.errors import InvalidArgument, NotFound
from ltrr_server.log.events import LoggedEvent, count_events, read_events
from ltrr_server.log.store import EventLogStore
from ltrr_server.ope import estimators
from ltrr_server.ope.estimators import Estimate
from ltrr_server.ope.targets import (
    ConstantTarget,
    ModelTarget,
    ReplayTarget,
    TableTarget,
    Target,
    UniformTarget,
)
from ltrr_server.policy.model import ModelFrame, PolicyModel, finite_probabilities

# Progress is reported at most this often.
PROGRESS_SECONDS = 0.5


@dataclass(frozen=True)
class TargetPlan:
    """A target as a request names it; picklable, built into a ``Target`` where the pass runs."""

    name: str
    uniform: bool = False
    action: str | None = None
    table: TableTarget | None = None
    model: bytes | None = None
    snapshot_id: int | None = None
    candidate: PolicySpec | None = None
    # A candidate's model after its replay is returned with its result (to warm-start a policy).
    keep_model: bool = False


@dataclass(frozen=True)
class EvaluationPlan:
    policy: str
    kind: str
    since: float
    until: float
    targets: tuple[TargetPlan, ...]
    estimators: tuple[str, ...] = estimators.NAMES
    # The reward model's interactions (DR), the policy's own by default.
    interactions: tuple[str, ...] = ("::", "::A")
    # A target's name: every target's estimates are also given minus this one's, paired over the
    # same events (``SlotResult.versus_baseline``).
    baseline: str | None = None


@dataclass
class SlotResult:
    slot: int
    estimates: dict[str, Estimate]
    # Diagnostics of the importance weights: a mean far from 1 means the logged probabilities or
    # the target's do not describe the same actions; a small effective sample size, a noisy estimate.
    mean_weight: float
    max_weight: float
    effective_sample_size: float
    # Share of events in which the target could take the logged action at all.
    support: float
    # Each estimate minus the plan's baseline target's, with the paired interval; empty without one.
    versus_baseline: dict[str, Estimate] = field(default_factory=dict)
    # The target's mean probability on actions the logged policy gave probability 0 (a log that
    # did not explore: apprentice mode, imported deterministic decisions). No estimator sees what
    # those choices would have earned: above 0, every estimate here leaves that share out.
    unlogged_share: float = 0.0


@dataclass
class TargetResult:
    name: str
    slots: list[SlotResult]
    # A replayed candidate's model at the end of the log, when its plan asked to keep it.
    model: bytes | None = None
    # Why the target has no estimates (then ``slots`` is empty): its model gave NaN or infinite
    # probabilities (no estimate over the events before would describe it), or has such weights.
    problem: str = ""


@dataclass
class EvaluationResult:
    policy: str
    events: int
    first_at: float
    last_at: float
    logged: Estimate
    targets: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0


Progress = Callable[[int, int], None]


class RewardModel:
    """The direct method's reward estimate for DR: VW's cb_adf regression on the logged actions
    (``--cb_type dm``: no importance weights), learned online over the same log. Its scores come
    through ``PolicyModel``'s prediction path, whose parsed actions are reused event to event."""

    def __init__(self, interactions: Sequence[str]) -> None:
        self._model = PolicyModel.reward_regression(interactions)

    def predict(self, event: LoggedEvent) -> list[float]:
        """The estimated reward of every action (a cb_adf "prediction" is each action's cost)."""
        return [-cost for cost in self._model.predict_one(event.shared, event.action_lines)[0]]

    def learn(self, event: LoggedEvent) -> None:
        for idx, prob in zip(event.chosen, event.logged, strict=True):
            self._model.learn_one(event.shared, event.action_lines, [(idx, -event.reward, prob)])


def _predicts_only(kind: str) -> ModelFrame:
    """A stored model evaluated as it is never learns, so how it would weigh a decision and
    the size of its rewards do not matter."""
    return ModelFrame(kind, "dm")


def build_target(plan: TargetPlan, store: EventLogStore, policy: str, kind: str) -> Target:
    if plan.uniform:
        return UniformTarget()
    if plan.action is not None:
        return ConstantTarget(plan.action)
    if plan.table is not None:
        return plan.table
    if plan.candidate is not None:
        return ReplayTarget(plan.candidate, plan.name)
    if plan.model is not None:
        return ModelTarget(PolicyModel.from_bytes(plan.model, _predicts_only(kind)), plan.name)
    if plan.snapshot_id is not None:
        data = store.snapshot_model(plan.snapshot_id)
        if data is None or data[0] != policy:
            raise NotFound(f"snapshot {plan.snapshot_id} of this policy not found", field="targets")
        return ModelTarget(PolicyModel.from_bytes(data[1], _predicts_only(kind)), plan.name)
    raise InvalidArgument("targets", f"target {plan.name!r} names nothing to evaluate")


class _Column:
    """One target's figures for one slot, event by event."""

    def __init__(self) -> None:
        self.weights = array("d")
        self.q_target = array("d")
        self.unlogged = 0.0  # the sum over events of the target's probability on unlogged actions


def evaluate(store: EventLogStore, plan: EvaluationPlan, progress: Progress | None = None) -> EvaluationResult:
    """Estimates every target of ``plan`` over the policy's joined events in [since, until)."""
    started = time.perf_counter()
    targets = [build_target(tp, store, plan.policy, plan.kind) for tp in plan.targets]
    use_dr = "dr" in plan.estimators
    reward_model = RewardModel(plan.interactions) if use_dr else None
    total = count_events(store, plan.policy, plan.since, plan.until)
    if progress is not None:
        progress(0, total)
    rewards = array("d")
    slot_rewards: list[array[float]] = []
    q_logged: list[array[float]] = []
    columns: list[list[_Column]] = [[] for _ in targets]
    first_at, last_at, n = math.inf, -math.inf, 0
    last_report = time.monotonic()
    problems: dict[int, str] = {}  # by target index
    for ev in read_events(store, plan.policy, plan.since, plan.until):
        if any(p <= 0 for p in ev.logged):
            continue  # not drawn by the logged policy: no importance weight exists
        n += 1
        first_at, last_at = min(first_at, ev.created_at), max(last_at, ev.created_at)
        rewards.append(ev.reward)
        while len(slot_rewards) < ev.slots:  # a slot first seen now: earlier events had no such slot
            slot_rewards.append(array("d"))
            q_logged.append(array("d"))
        q = reward_model.predict(ev) if reward_model is not None else None
        for s, (idx, _) in enumerate(zip(ev.chosen, ev.logged, strict=True)):
            slot_rewards[s].append(ev.reward)
            q_logged[s].append(q[idx] if q is not None else 0.0)
        # Per slot, the actions the logged policy could not have taken: none when it explored.
        holes = [() if min(p) > 0 else tuple(a for a, pa in enumerate(p) if pa <= 0) for p in ev.probabilities]
        for t, (target, cols) in enumerate(zip(targets, columns, strict=True)):
            if t in problems:
                continue
            probs = target.probabilities(ev)
            if not finite_probabilities(probs):
                problems[t] = (f"its model gave NaN or infinite probabilities at joined event {n} of {max(total, n)} "
                               f"(seq {ev.seq}): it is not estimated")
                continue
            while len(cols) < ev.slots:
                cols.append(_Column())
            for s, (idx, logged) in enumerate(zip(ev.chosen, ev.logged, strict=True)):
                dist = probs[s] if s < len(probs) else [0.0] * len(ev.action_ids)
                cols[s].weights.append(dist[idx] / logged)
                if holes[s]:
                    cols[s].unlogged += sum(dist[a] for a in holes[s])
                cols[s].q_target.append(sum(p * qa for p, qa in zip(dist, q, strict=True)) if q is not None else 0.0)
            target.learn(ev)
        if reward_model is not None:
            reward_model.learn(ev)
        if progress is not None and time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            progress(n, max(total, n))
    for t, target in enumerate(targets):
        # Under epsilon or softmax exploration a model with NaN weights can still give finite
        # (meaningless) probabilities; its estimate would say nothing, and its warm start would serve them.
        if t not in problems and isinstance(target, ModelTarget) and not target.model.finite():
            problems[t] = "its model has NaN or infinite weights: it is not estimated"
        if t not in problems and n and (why := target.unmatched(n)):
            problems[t] = f"{why}: it is not estimated"
        if t not in problems and columns[t] and all(c.unlogged >= len(c.weights) * (1 - 1e-9) for c in columns[t]):
            problems[t] = ("the logged decisions gave probability 0 to every choice it makes (they did not explore): "
                           "no event says what it would earn: it is not estimated")
    if n == 0:
        raise NotFound(f"policy {plan.policy!r} has no joined decisions made in the range since_ms="
                       f"{plan.since * 1000:.0f}, until_ms={plan.until * 1000:.0f}", field="since_ms")
    result = EvaluationResult(plan.policy, n, first_at, last_at, estimators.mean(_np(rewards)))

    def slot_terms(cols: list[_Column]) -> list[dict[str, estimators.Terms]]:
        # One target's at a time: a million events' terms are 8 MB per target, estimator and slot.
        return [_slot_terms(plan.estimators, _np(slot_rewards[s]), _np(q_logged[s]), col) for s, col in enumerate(cols)]

    names = [tp.name for tp in plan.targets]
    base_index = names.index(plan.baseline) if plan.baseline in names else None
    if base_index in problems:
        base_index = None
    base = slot_terms(columns[base_index]) if base_index is not None else None
    for i, (tp, target, cols) in enumerate(zip(plan.targets, targets, columns, strict=True)):
        if i in problems:
            result.targets.append(TargetResult(target.name, [], problem=problems[i]))
            continue
        slots = []
        own_terms = base if i == base_index and base is not None else slot_terms(cols)
        for s, (col, terms) in enumerate(zip(cols, own_terms, strict=True)):
            w = _np(col.weights)
            versus = {k: t.minus(base[s][k]) for k, t in terms.items()} if base is not None else {}
            slots.append(SlotResult(s, {k: t.estimate() for k, t in terms.items()}, float(np.mean(w)),
                                    float(np.max(w)), estimators.effective_sample_size(w), float(np.mean(w > 0)),
                                    versus, col.unlogged / len(w)))
        model = target.model.to_bytes() if tp.keep_model and isinstance(target, ReplayTarget) else None
        result.targets.append(TargetResult(target.name, slots, model))
    if progress is not None:
        progress(n, n)
    result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class EvaluateJob:
    """An evaluation as a ``jobs.Job``: progress, then the ``EvaluationResult``."""

    plan: EvaluationPlan

    def run(self, store: EventLogStore, send: Callable[[object], None]) -> None:
        from ltrr_server.jobs import Progress

        send(evaluate(store, self.plan, lambda done, total: send(Progress(done, total))))


def _slot_terms(names: tuple[str, ...], r: Any, q_logged: Any, col: _Column) -> dict[str, estimators.Terms]:
    w = _np(col.weights)
    out: dict[str, estimators.Terms] = {}
    if "ips" in names:
        out["ips"] = estimators.ips_terms(r, w)
    if "snips" in names:
        out["snips"] = estimators.snips_terms(r, w)
    if "dr" in names:
        out["dr"] = estimators.dr_terms(r, w, q_logged, _np(col.q_target))
    return out


def _np(values: array[float]) -> Any:
    return np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)
