"""EvaluatePolicy's request as an ``EvaluationPlan`` and its result as messages."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from ltrr.v1 import admin_pb2
from ltrr_server.api.convert import policy_to_proto, spec_from_proto, spec_to_proto
from ltrr_server.bounds import FEATURE_PATH_CHARS, ID_CHARS, MAX_TIME_MS, NAME_CHARS, TABLE_VALUES
from ltrr_server.config import Limits, PolicySpec
from ltrr_server.core.tuning import TuneOutcome
from ltrr_server.errors import InvalidArgument
from ltrr_server.ope.estimators import Estimate
from ltrr_server.ope.evaluate import EvaluationPlan, EvaluationResult, TargetPlan
from ltrr_server.ope.targets import TableTarget
from ltrr_server.policy.runtime import PolicyRuntime
from ltrr_server.tenancy import outside

_ESTIMATORS = {admin_pb2.ESTIMATOR_IPS: "ips", admin_pb2.ESTIMATOR_SNIPS: "snips", admin_pb2.ESTIMATOR_DR: "dr"}


def _weights(weights: Sequence[admin_pb2.ActionWeight], field: str, limits: Limits) -> dict[str, float]:
    if len(weights) > limits.max_actions:
        raise InvalidArgument(field, f"{len(weights)} weights, more than limits.max_actions={limits.max_actions}")
    out: dict[str, float] = {}
    for i, w in enumerate(weights):
        if not w.action:
            raise InvalidArgument(f"{field}[{i}].action", "is empty")
        if len(w.action) > NAME_CHARS:
            raise InvalidArgument(f"{field}[{i}].action", f"longer than {NAME_CHARS} characters")
        if not (math.isfinite(w.weight) and w.weight >= 0):
            raise InvalidArgument(f"{field}[{i}].weight", f"must be a finite weight >= 0, got {w.weight}")
        out[w.action] = w.weight
    return out


def _table(t: admin_pb2.TableTarget, field: str, name: str, limits: Limits) -> TableTarget:
    feature: tuple[str, str] | None = None
    if len(t.feature) > FEATURE_PATH_CHARS:
        raise InvalidArgument(f"{field}.feature", f"longer than {FEATURE_PATH_CHARS} characters")
    if t.feature:
        ns, dot, fname = t.feature.partition(".")
        if not dot or not ns or not fname:
            raise InvalidArgument(f"{field}.feature", f"must be namespace.feature, got {t.feature!r}")
        feature = (ns, fname)
    elif t.by_value:
        raise InvalidArgument(f"{field}.by_value", "needs feature: the context feature whose value picks a table")
    if len(t.by_value) > TABLE_VALUES:
        raise InvalidArgument(f"{field}.by_value", f"{len(t.by_value)} tables, more than {TABLE_VALUES}")
    by_value: dict[str, dict[str, float]] = {}
    for i, ft in enumerate(t.by_value):
        if len(ft.value) > NAME_CHARS:
            raise InvalidArgument(f"{field}.by_value[{i}].value", f"longer than {NAME_CHARS} characters")
        by_value[ft.value] = _weights(ft.weights, f"{field}.by_value[{i}].weights", limits)
    return TableTarget(_weights(t.default_weights, f"{field}.default_weights", limits), feature, by_value, name)


def candidate_from_proto(candidate: admin_pb2.PolicySpec, current: PolicySpec, limits: Limits,
                         field: str) -> PolicySpec:
    """A candidate learning configuration of the policy ``current``: validated as a spec, errors
    naming ``field``; its name is the policy's and its kind must be."""
    if len(candidate.name) > ID_CHARS:
        raise InvalidArgument(f"{field}.name", f"longer than {ID_CHARS} characters")
    cand = admin_pb2.PolicySpec()
    cand.CopyFrom(candidate)
    cand.name = current.name
    try:
        spec = spec_from_proto(cand, limits)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}.{exc.field.removeprefix('spec.')}",
                              exc.message.removeprefix(f"{exc.field}: ")) from exc
    if spec.kind != current.kind:
        raise InvalidArgument(f"{field}.kind", f"is {spec.kind}; the policy's is {current.kind}")
    return spec


def _targets(request: admin_pb2.EvaluatePolicyRequest, rt: PolicyRuntime, limits: Limits) -> list[TargetPlan]:
    if len(request.targets) > limits.max_evaluation_targets:
        raise InvalidArgument("targets", f"{len(request.targets)} targets, more than "
                                         f"limits.max_evaluation_targets={limits.max_evaluation_targets}")
    targets = list(request.targets) or [admin_pb2.EvaluationTarget(live=True),
                                        admin_pb2.EvaluationTarget(uniform=True)]
    plans: list[TargetPlan] = []
    for i, t in enumerate(targets):
        field = f"targets[{i}]"
        if len(t.name) > NAME_CHARS:
            raise InvalidArgument(f"{field}.name", f"longer than {NAME_CHARS} characters")
        which = t.WhichOneof("target")
        if which == "live":
            plans.append(TargetPlan(t.name or "live", model=rt.serving.to_bytes()))
        elif which == "snapshot_id":
            plans.append(TargetPlan(t.name or f"snapshot:{t.snapshot_id}", snapshot_id=t.snapshot_id))
        elif which == "action":
            if not t.action:
                raise InvalidArgument(f"{field}.action", "is empty")
            if len(t.action) > NAME_CHARS:
                raise InvalidArgument(f"{field}.action", f"longer than {NAME_CHARS} characters")
            plans.append(TargetPlan(t.name or f"action:{t.action}", action=t.action))
        elif which == "uniform":
            plans.append(TargetPlan(t.name or "uniform", uniform=True))
        elif which == "table":
            name = t.name or "table"
            plans.append(TargetPlan(name, table=_table(t.table, f"{field}.table", name, limits)))
        elif which == "candidate":
            spec = candidate_from_proto(t.candidate, rt.spec, limits, f"{field}.candidate")
            plans.append(TargetPlan(t.name or "candidate", candidate=spec))
        elif which == "each_action":
            if not rt.spec.actions:
                raise InvalidArgument(f"{field}.each_action", "the policy's spec has no actions (a retrieval "
                                                              "policy's are its plans): name them with action targets "
                                                              "(action:lexical:10+vector:50)")
            plans += [TargetPlan(f"action:{a.id}", action=a.id) for a in rt.spec.actions]
        else:
            raise InvalidArgument(field, "names no target (live, snapshot_id, action, uniform, table, candidate "
                                         "or each_action)")
    if len(plans) > limits.max_evaluation_targets:
        raise InvalidArgument("targets", f"{len(plans)} targets, more than limits.max_evaluation_targets="
                                         f"{limits.max_evaluation_targets}")
    return plans


def time_range(since_ms: int, until_ms: int) -> tuple[float, float]:
    """[since, until) in seconds from a request's milliseconds (0: unbounded)."""
    for name, value in (("since_ms", since_ms), ("until_ms", until_ms)):
        if not 0 <= value <= MAX_TIME_MS:
            raise InvalidArgument(name, f"must be milliseconds since 1970 (0: unbounded), got {value}")
    since = since_ms / 1000.0
    until = until_ms / 1000.0 if until_ms else time.time() + 1.0
    if until <= since:
        raise InvalidArgument("until_ms", "must be after since_ms")
    return since, until


def plan_from_proto(request: admin_pb2.EvaluatePolicyRequest, rt: PolicyRuntime, limits: Limits) -> EvaluationPlan:
    since, until = time_range(request.since_ms, request.until_ms)
    names: list[str] = []
    if len(request.estimators) > len(_ESTIMATORS):
        raise InvalidArgument("estimators", f"{len(request.estimators)} estimators, more than the "
                                            f"{len(_ESTIMATORS)} there are")
    for i, e in enumerate(request.estimators):
        if e not in _ESTIMATORS:
            raise InvalidArgument(f"estimators[{i}]", f"unknown estimator {e}")
        names.append(_ESTIMATORS[e])
    targets = _targets(request, rt, limits)
    if len(request.baseline) > NAME_CHARS:
        raise InvalidArgument("baseline", f"longer than {NAME_CHARS} characters")
    if request.baseline:
        named = sum(t.name == request.baseline for t in targets)
        if named != 1:
            labels = ", ".join(repr(t.name) for t in targets[:10])
            raise InvalidArgument("baseline", f"names {named} of the targets ({labels}): it must name exactly one"
                                  + ("; give them names" if named > 1 else ""))
    return EvaluationPlan(
        policy=rt.spec.name, kind=rt.spec.kind, since=since, until=until, targets=tuple(targets),
        baseline=request.baseline or None,
        estimators=tuple(sorted(set(names), key=list(_ESTIMATORS.values()).index)) or tuple(_ESTIMATORS.values()),
        interactions=rt.spec.interactions,
    )


def _estimate(e: Estimate) -> admin_pb2.Estimate:
    return admin_pb2.Estimate(value=e.value, std_error=e.std_error, lower=e.lower, upper=e.upper)


def result_to_proto(r: EvaluationResult) -> admin_pb2.PolicyEvaluation:
    out = admin_pb2.PolicyEvaluation(
        policy=outside(r.policy), events=r.events, first_ms=int(r.first_at * 1000), last_ms=int(r.last_at * 1000),
        logged=_estimate(r.logged), seconds=r.seconds)
    for t in r.targets:
        te = out.targets.add(name=t.name, problem=t.problem)
        for s in t.slots:
            se = te.slots.add(slot=s.slot, mean_weight=s.mean_weight, max_weight=s.max_weight,
                              effective_sample_size=s.effective_sample_size, support=s.support,
                              unlogged_share=s.unlogged_share)
            for name, estimate in s.estimates.items():
                getattr(se, name).CopyFrom(_estimate(estimate))
            for name, estimate in s.versus_baseline.items():
                getattr(se.versus_baseline, name).CopyFrom(_estimate(estimate))
    return out


def tune_to_proto(t: TuneOutcome) -> admin_pb2.TuneResult:
    out = admin_pb2.TuneResult(policy=outside(t.policy), events=t.events, logged=_estimate(t.logged), applied=t.applied,
                               reason=t.reason, seconds=t.seconds, recommended=spec_to_proto(t.recommended))
    for c in t.candidates:
        if c.problem:
            out.candidates.add(spec=spec_to_proto(c.spec), problem=c.problem)
        else:
            out.candidates.add(spec=spec_to_proto(c.spec), estimate=_estimate(c.estimate), support=c.support,
                               versus_live=_estimate(c.versus_live), unlogged_share=c.unlogged_share,
                               effective_sample_size=c.effective_sample_size)
    if t.info is not None:
        out.policy_after.CopyFrom(policy_to_proto(t.info))
    return out
