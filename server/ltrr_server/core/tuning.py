"""Tuning from the log: candidate learning configurations replayed over a policy's joined
events, each estimated, and the policy switched to the best one when the log says it is better.

Each candidate learns the log in order from a fresh model and is scored on every event before it
learns it (progressive validation): its SNIPS estimate is the mean reward it would have had,
learning online on this traffic, as the live policy did. The live policy's own figure is its
logged mean reward over the same events.

What tune recommends (and ``apply`` switches to) is the candidate with the highest estimate among
those whose 95% lower bound is above that figure; when none is, the live configuration stays (the
rule of safe policy improvement: change only what the log says is better). A candidate that only
ties is not worth a new lineage, and the highest estimate alone is not a reliable pick: on the
10-action world of ``bench/bench_tune.py`` the SquareCB variants' estimates lay within 0.04 of
each other with overlapping intervals while their true regrets differed by about as much as one
configuration's differs between two runs. The new lineage starts from the candidate's replayed
model (warm start), not from nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ltrr_server.config import PolicySpec
from ltrr_server.core.policies import PolicyBook, PolicyInfo
from ltrr_server.jobs import Jobs, Progress
from ltrr_server.ope.estimators import Estimate
from ltrr_server.ope.evaluate import EvaluateJob, EvaluationPlan, EvaluationResult, TargetPlan

# The grid a request without candidates gets: the policy's own configuration and one change at a
# time around it (``candidate_grid``).
_LEARNING_RATES = (0.1, 0.25, 1.0, 2.0)
_POWER_TS = (0.0, 0.5)
_EXPLORATIONS: tuple[dict[str, object], ...] = (
    dict(exploration="squarecb", squarecb_gamma_scale=10.0),
    dict(exploration="squarecb", squarecb_gamma_scale=50.0),
    dict(exploration="epsilon", epsilon=0.05),
)
_INTERACTIONS = ((":A",), ("::", ":A"))
_CB_TYPES = ("dm", "mtr")


def candidate_grid(spec: PolicySpec) -> list[PolicySpec]:
    """The policy's configuration, then each one-parameter change of it (duplicates removed).

    >>> from ltrr_server.config import PolicySpec
    >>> grid = candidate_grid(PolicySpec(name="p"))
    >>> len(grid), grid[0] == PolicySpec(name="p")
    (13, True)
    >>> sorted({g.learning_rate for g in grid})
    [0.1, 0.25, 0.5, 1.0, 2.0]
    """
    changes: list[dict[str, object]] = [{}]
    changes += [dict(learning_rate=lr) for lr in _LEARNING_RATES]
    changes += [dict(power_t=pt) for pt in _POWER_TS]
    changes += list(_EXPLORATIONS)
    changes += [dict(interactions=i) for i in _INTERACTIONS]
    changes += [dict(cb_type=c) for c in _CB_TYPES]
    out: list[PolicySpec] = []
    seen: set[tuple[object, ...]] = set()
    for change in changes:
        candidate = dataclasses.replace(spec, **change)  # type: ignore[arg-type]
        if candidate.learning_params() not in seen:
            seen.add(candidate.learning_params())
            out.append(candidate)
    return out


@dataclass
class CandidateResult:
    spec: PolicySpec
    estimate: Estimate
    support: float


@dataclass
class TuneOutcome:
    policy: str
    events: int
    logged: Estimate
    # Best estimate first.
    candidates: list[CandidateResult]
    # The candidate apply switches to, or the live configuration when none is clearly better.
    recommended: PolicySpec
    applied: bool
    reason: str
    info: PolicyInfo | None
    seconds: float


@dataclass
class _Choice:
    ranked: list[CandidateResult]  # best estimate first
    index: int | None  # in the specs of the candidate to switch to; None: keep the live configuration
    recommended: PolicySpec
    reason: str


def _choose(result: EvaluationResult, specs: list[PolicySpec], current: PolicySpec, apply: bool) -> _Choice:
    """The candidates ranked, and the one to switch to (see the module's docstring), with why."""
    scored = [CandidateResult(spec, t.slots[0].estimates["snips"], t.slots[0].support)
              for spec, t in zip(specs, result.targets, strict=True)]
    order = sorted(range(len(scored)), key=lambda i: -scored[i].estimate.value)
    ranked = [scored[i] for i in order]
    live = result.logged.value
    own = current.learning_params()
    better = [i for i in order if scored[i].estimate.lower > live and specs[i].learning_params() != own]
    if not better:
        if ranked[0].spec.learning_params() == own:
            why = "the best candidate is the policy's own configuration"
        else:
            why = (f"no candidate's lower bound is above the live policy's mean reward {live:.6g} (the best "
                   f"estimate's: {ranked[0].estimate.lower:.6g}): the live configuration stays")
        return _Choice(ranked, None, current, why)
    pick = scored[better[0]]
    verb = "switched to" if apply else "would switch to (apply to do it)"
    first = "the best candidate" if better[0] == order[0] else "the best candidate whose lower bound beats it"
    return _Choice(ranked, better[0], pick.spec, f"{verb} {first}: lower bound {pick.estimate.lower:.6g} above the "
                                                 f"live policy's mean reward {live:.6g}")


async def tune(policies: PolicyBook, jobs: Jobs, name: str, candidates: list[PolicySpec],
               since: float, until: float, apply: bool) -> AsyncIterator[Progress | TuneOutcome]:
    """Progress, then the outcome; with ``apply`` the policy switches when the rule above allows."""
    rt = policies.get(name, "name")
    current = rt.spec
    specs = candidates or candidate_grid(current)
    plan = EvaluationPlan(
        policy=name, kind=current.kind, since=since, until=until, estimators=("snips",),
        interactions=current.interactions,
        targets=tuple(TargetPlan(f"candidate {i}", candidate=s, keep_model=apply) for i, s in enumerate(specs)))
    async for item in jobs.run(EvaluateJob(plan)):
        if isinstance(item, Progress):
            yield item
            continue
        choice = _choose(item, specs, current, apply)
        switch, reason, info = apply and choice.index is not None, choice.reason, None
        if switch and choice.index is not None:
            if policies.get(name, "name").spec != current:
                switch, reason = False, "the policy was changed while the candidates were replayed: not applied"
            else:
                spec = dataclasses.replace(specs[choice.index], **{f: getattr(current, f) for f in _LIVE_FIELDS})
                info, _ = await policies.update(spec, warm_start=item.targets[choice.index].model)
        yield TuneOutcome(name, item.events, item.logged, choice.ranked, choice.recommended, switch, reason, info,
                          item.seconds)


# Fields a tuning never changes: they are the policy's, not its learning configuration's.
_LIVE_FIELDS = ("name", "actions", "join_window_seconds", "default_reward", "aggregation", "slots", "description",
                "mode")
