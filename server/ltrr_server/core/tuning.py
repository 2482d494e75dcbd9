"""Tuning from the log: candidate learning configurations replayed over a policy's joined
events, each estimated, and the policy switched to the best one when the log says it is better.

Each candidate learns the log in order from a fresh model and is scored on every event before it
learns it (progressive validation): its SNIPS estimate is the mean reward it would have had,
learning online on this traffic, as the live policy did. The live configuration is always one of
the candidates (added when a request leaves it out), replayed the same way.

What tune recommends (and ``apply`` switches to) is the candidate with the highest estimate among
those clearly better than the live configuration: the lower bound of its paired difference with
the live configuration's replay, over the same events, is above zero at 95% confidence for all
the candidates at once (one-sided, Bonferroni: z = 2.64 for 12 of them). When none is, the live
configuration stays: the rule of safe policy improvement, change only what the log says is
better, and a candidate that only ties is not worth a new lineage. The new lineage starts from the
candidate's replayed model (warm start), not from nothing.

Why the pairing, measured on the 10-action world of ``bench/bench_tune.py``: replay is
pessimistic. The live configuration's own replay estimated 0.280 where it had logged a mean
reward of 0.297, so the rule before, a candidate's 95% lower bound against the logged mean, kept
the live configuration while a learning rate of 0.25 had a lower true regret in every live stream
(0.097 against 0.140). Both replays share that bias, and as far as they agree, their noise. How
far that goes, measured on that world's 20k events: for a change of exploration alone, the
replayed models are the same and the paired standard error is about 20 times smaller than one
estimate's (0.0006 against 0.013); for a change of learning setting the two replays soon choose
differently and it is about as large as one estimate's (0.008-0.022), against true differences of
a few thousandths. On such a log the rule keeps the live configuration, as it should.

Why all the candidates at once: in the same world a candidate exploring less (SquareCB's gamma
scale 50 instead of 20) was ahead of the live configuration's replay by +0.0009 with a paired
standard error of 0.00046: above zero at 95% for one candidate (0.0009 - 1.645 x 0.00046), while
its true regret was the grid's worst (0.236 against 0.159). Twelve bounds at 95% each give such a
near-miss a fair chance; the family's bound (z = 2.64) kept it out.

What replay cannot judge: a candidate that explores less. Every candidate learns the events the
live policy's exploration collected, so one that explores less is spared the cost of exploring
but not deprived of what exploring taught it; its estimate leans optimistic. So a candidate that
turns the live policy's own exploration down (SquareCB's gamma scale up, epsilon down, softmax's
lambda up) is ranked but never recommended (``explores_less``). The family's bound did not keep
that lean out: in a second run the same gamma scale 50 passed it (+0.0018, standard error
0.0006) and its true regret was again above the live configuration's (0.157 against 0.149, 8
live streams). A change of method (epsilon to SquareCB) cannot be ordered so and stays eligible.
The learning settings (learning rate, power_t, cb_type, interactions, optimizer) have no such lean.

What the log never saw: a log that did not explore (an apprentice's, decisions imported with
probability 1) says nothing of the actions it did not take. A replay's choices there weigh zero,
and its SNIPS estimate is the reward of the events where it agreed with the log. On an apprentice
log of 3 actions a uniform baseline served, every candidate was estimated at 0.79-0.81 against
the logged 0.28. A candidate that puts more than ``UNLOGGED_MAX`` of its choices on such actions
is ranked but never recommended: that share's reward is unknown, and the differences tune
resolves are a few thousandths.

What rests on a few events: a log that explores thinly (the demo's retrieval policy, epsilon 0.02
over about 140 plans, so an explored plan was logged with probability 0.00014) weighs a replay's
agreement with one explored decision thousands of times. On 3,003 such events a learning rate of
2 had an effective sample size of 2 (the live configuration's replay 2,644), yet its SNIPS
interval was 0.95-1.01 and its paired difference +0.098 cleared the family's bound: the normal
approximation behind both does not hold on two events. A candidate whose effective sample size
is under ``MIN_ESS`` is ranked but never recommended. The floor is absolute, not a share of the
log: on the suite's logistic10 logs (SquareCB, 20k events, seeds 1-3) the live configuration's own
replay kept 11-16% of the events and the other candidates 1-17% (181 to 3,488), weighed by the
few explored decisions whose action they would have taken; a share would have set most of them
aside, a floor of 100 none.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ltrr_server.config import CB_TYPES, OPTIMIZERS, PolicySpec
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


def candidate_grid(spec: PolicySpec) -> list[PolicySpec]:
    """The policy's configuration, then each one-parameter change of it (duplicates removed).

    >>> from ltrr_server.config import PolicySpec
    >>> grid = candidate_grid(PolicySpec(name="p"))
    >>> len(grid), grid[0] == PolicySpec(name="p")
    (14, True)
    >>> sorted({g.learning_rate for g in grid})
    [0.1, 0.25, 0.5, 1.0, 2.0]

    A coin-betting policy has no learning rate or decay to change: those candidates are itself.

    >>> len(candidate_grid(PolicySpec(name="p", optimizer="coin")))
    8
    """
    changes: list[dict[str, object]] = [{}]
    changes += [dict(learning_rate=lr) for lr in _LEARNING_RATES]
    changes += [dict(power_t=pt) for pt in _POWER_TS]
    changes += list(_EXPLORATIONS)
    changes += [dict(interactions=i) for i in _INTERACTIONS]
    changes += [dict(cb_type=c) for c in CB_TYPES]
    # Coin betting learned better than AdaGrad with few clicks, many actions or late rewards, and
    # worse after an abrupt change (docs/benchmarks.md): which one a policy's traffic is, its log can say.
    changes += [dict(optimizer=o) for o in OPTIMIZERS]
    return distinct([dataclasses.replace(spec, **change) for change in changes])  # type: ignore[arg-type]


# The largest share of a candidate's choices on actions the log never took (the module's
# docstring) with which it may still be recommended.
UNLOGGED_MAX = 0.01
# The smallest effective sample size (events, as the importance weights count them) on which a
# candidate may be recommended: the module's docstring.
MIN_ESS = 100.0


@dataclass
class CandidateResult:
    spec: PolicySpec
    estimate: Estimate
    support: float
    # Its estimate minus the live configuration's replay, paired over the same events (95%).
    versus_live: Estimate
    # Why it has no estimate (its replay's model turned NaN or infinite: ``ope.evaluate``): ranked
    # last, never recommended, and its figures are NaN.
    problem: str = ""
    # Its mean probability on actions the logged policy gave probability 0 (``SlotResult``).
    unlogged_share: float = 0.0
    # Of its importance weights (``SlotResult``): how many events its estimate effectively rests on.
    effective_sample_size: float = math.nan


_UNKNOWN = Estimate(math.nan, math.nan, math.nan, math.nan)


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


def distinct(specs: list[PolicySpec]) -> list[PolicySpec]:
    """The first of each learning configuration: a repeat would be replayed again for nothing and
    would widen every candidate's bound (``family_z`` counts candidates).

    >>> from ltrr_server.config import PolicySpec
    >>> [s.learning_rate for s in distinct([PolicySpec(name="p"), PolicySpec(name="p", learning_rate=0.25),
    ...                                     PolicySpec(name="p", description="the same again")])]
    [0.5, 0.25]
    """
    out: list[PolicySpec] = []
    seen: set[tuple[object, ...]] = set()
    for spec in specs:
        if spec.learning_params() not in seen:
            seen.add(spec.learning_params())
            out.append(spec)
    return out


def family_z(candidates: int) -> float:
    """The one-sided normal quantile that holds 95% confidence for ``candidates`` lower bounds at once.

    >>> round(family_z(1), 3), round(family_z(12), 3)
    (1.645, 2.638)
    """
    return statistics.NormalDist().inv_cdf(1 - 0.05 / max(candidates, 1))


def explores_less(candidate: PolicySpec, live: PolicySpec) -> bool:
    """Whether ``candidate`` turns the live configuration's own exploration method down, whatever
    else it changes: replay would credit it with exploring less and never charge it for what that
    exploration taught (the module's docstring).

    >>> live = PolicySpec(name="p")  # SquareCB, gamma scale 20
    >>> import dataclasses
    >>> [explores_less(dataclasses.replace(live, **c), live) for c in (
    ...     dict(squarecb_gamma_scale=50.0), dict(squarecb_gamma_scale=10.0, learning_rate=1.0),
    ...     dict(exploration="epsilon", epsilon=0.01))]
    [True, False, False]
    """
    if candidate.exploration != live.exploration:
        return False
    if candidate.exploration == "squarecb":
        return candidate.squarecb_gamma_scale > live.squarecb_gamma_scale
    if candidate.exploration == "softmax":
        return candidate.softmax_lambda > live.softmax_lambda
    return candidate.epsilon < live.epsilon  # epsilon, bag, cover, rnd


def _events_to_tell(difference: Estimate, z: float, events: int) -> str:
    """How long a log would tell a positive ``difference`` apart from zero, were it as large
    there: its standard error shrinks as one over the root of the events.

    >>> _events_to_tell(Estimate(0.01, 0.0075, 0.0, 0.0), 2.638, 20_000)
    '; a log about 3.9x as long (~78.3k events) would tell a difference that large'
    """
    if not difference.value > 0 or not difference.std_error > 0 or events <= 0:
        return ""
    times = (z * difference.std_error / difference.value) ** 2
    return f"; a log about {times:.2g}x as long (~{_count(times * events)} events) would tell a difference that large"


def _count(n: float) -> str:
    return f"{n / 1e6:.2g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def _choose(result: EvaluationResult, specs: list[PolicySpec], own_index: int, current: PolicySpec,
            apply: bool) -> _Choice:
    """The candidates ranked, and the one to switch to (see the module's docstring), with why."""
    scored = [CandidateResult(spec, t.slots[0].estimates["snips"], t.slots[0].support,
                              t.slots[0].versus_baseline.get("snips", _UNKNOWN),
                              unlogged_share=t.slots[0].unlogged_share,
                              effective_sample_size=t.slots[0].effective_sample_size) if not t.problem
              else CandidateResult(spec, _UNKNOWN, 0.0, _UNKNOWN, t.problem)
              for spec, t in zip(specs, result.targets, strict=True)]
    order = sorted(range(len(scored)), key=lambda i: (bool(scored[i].problem), -scored[i].estimate.value))
    ranked = [scored[i] for i in order]
    failed = sum(1 for c in scored if c.problem)
    if scored[own_index].problem:
        return _Choice(ranked, None, current, f"the live configuration's own replay was not estimated ("
                                              f"{scored[own_index].problem}): no candidate can be compared with it; "
                                              f"the live configuration stays")
    own_unlogged = scored[own_index].unlogged_share
    if own_unlogged > UNLOGGED_MAX:
        why = (f"the log did not explore: {own_unlogged:.0%} of the live configuration's replayed choices are "
               f"actions it never took, whose reward no event says; replay cannot compare configurations on it; "
               f"the live configuration stays")
        return _Choice(ranked, None, current, why)
    not_estimated = (f"; {failed} candidate{'s' if failed > 1 else ''} not estimated (its replay's model turned NaN or "
                     f"infinite) ranked last" if failed else "")
    z = family_z(len(specs) - 1)
    bound = {i: scored[i].versus_live.value - z * scored[i].versus_live.std_error for i in order}
    passed = [i for i in order if i != own_index and bound[i] > 0]  # NaN compares false

    def eligible(i: int) -> bool:
        return (scored[i].unlogged_share <= UNLOGGED_MAX and scored[i].effective_sample_size >= MIN_ESS
                and not explores_less(specs[i], current))

    better = [i for i in passed if eligible(i)]
    # Why the others that passed were set aside, each named once (the first reason that holds).
    unseen = [i for i in passed if scored[i].unlogged_share > UNLOGGED_MAX]
    thin = [i for i in passed if i not in unseen and not scored[i].effective_sample_size >= MIN_ESS]
    timid = [i for i in passed if i not in unseen and i not in thin and not eligible(i)]
    set_aside = "".join(
        f"; {len(aside)} candidate{'s' if len(aside) > 1 else ''} {what} set aside ({why})"
        for aside, what, why in (
            (timid, "exploring less than the live configuration", "replay cannot judge that"),
            (unseen, f"choosing actions the log never took (over {UNLOGGED_MAX:.0%} of its choices)",
             "the log did not explore: what they would have earned is unknown"),
            (thin, f"resting on fewer than {MIN_ESS:.0f} events (effective sample size)",
             "an interval on a few heavily weighted events is not to be trusted"))
        if aside)

    if not better:
        # The best estimate among the candidates that could be recommended: one set aside may
        # have passed, and quoting its bound would contradict "not clearly better".
        top_index = next(i for i in order if i == own_index or eligible(i))
        if top_index == own_index:
            best = "the best estimate" if order[0] == own_index else "the best estimate among the rest"
            why = f"{best} is the policy's own configuration's: the live configuration stays"
        else:
            top = scored[top_index].versus_live
            why = (f"no candidate is clearly better than the live configuration's replay: the best estimate's "
                   f"difference {top.value:+.4g} has a lower bound of {bound[top_index]:+.4g} (95% for "
                   f"{len(specs) - 1} candidates at once){_events_to_tell(top, z, result.events)}; the live "
                   f"configuration stays")
        return _Choice(ranked, None, current, why + set_aside + not_estimated)
    pick = better[0]
    verb = "switched to" if apply else "would switch to (apply to do it)"
    first = "the best candidate" if pick == order[0] else "the best candidate clearly better than it"
    return _Choice(ranked, pick, specs[pick],
                   f"{verb} {first}: {scored[pick].versus_live.value:+.4g} over the live configuration's replay "
                   f"{scored[own_index].estimate.value:.4g}, lower bound {bound[pick]:+.4g} (95% for "
                   f"{len(specs) - 1} candidates at once){set_aside}{not_estimated}")


async def tune(policies: PolicyBook, jobs: Jobs, name: str, candidates: list[PolicySpec],
               since: float, until: float, apply: bool) -> AsyncIterator[Progress | TuneOutcome]:
    """Progress, then the outcome; with ``apply`` the policy switches when the rule above allows."""
    rt = policies.get(name, "name")
    current = rt.spec
    specs = distinct(list(candidates) or candidate_grid(current))
    params = [s.learning_params() for s in specs]
    if current.learning_params() not in params:  # the yardstick: always replayed
        specs.append(current)
        params.append(current.learning_params())
    own_index = params.index(current.learning_params())
    plan = EvaluationPlan(
        policy=name, kind=current.kind, since=since, until=until, estimators=("snips",),
        interactions=current.interactions, baseline=f"candidate {own_index}",
        targets=tuple(TargetPlan(f"candidate {i}", candidate=s, keep_model=apply) for i, s in enumerate(specs)))
    async for item in jobs.run(EvaluateJob(plan)):
        if isinstance(item, Progress):
            yield item
            continue
        choice = _choose(item, specs, own_index, current, apply)
        switch, reason, info = apply and choice.index is not None, choice.reason, None
        if switch and choice.index is not None:
            chosen = dataclasses.replace(specs[choice.index], **{f: getattr(current, f) for f in _LIVE_FIELDS})

            def change(live: PolicySpec, chosen: PolicySpec = chosen) -> PolicySpec:
                if live != current:
                    raise _Changed("the policy was changed while the candidates were replayed: not applied")
                return chosen

            try:
                info = (await policies.update(name, change, warm_start=item.targets[choice.index].model,
                                              field="name")).info
            except _Changed as exc:
                switch, reason = False, str(exc)
        yield TuneOutcome(name, item.events, item.logged, choice.ranked, choice.recommended, switch, reason, info,
                          item.seconds)


class _Changed(Exception):
    """The policy changed between a tuning's replay and its switch."""


# Fields a tuning never changes: they are the policy's, not its learning configuration's.
_LIVE_FIELDS = ("name", "actions", "join_window_seconds", "default_reward", "aggregation", "slots", "description",
                "mode")
