"""Plans: one budget per strategy, the actions of a retrieval policy.

Every combination of the strategies' budget ladders is a plan, except the one that runs
nothing. A plan's id names its running strategies: ``lexical:10+memory:50``.

>>> from ltrr_server.config import StrategySpec
>>> specs = [StrategySpec("lexical", "lexical", (0, 10)), StrategySpec("memory", "memory", (0, 5))]
>>> [p.id for p in make_plans(specs)]
['memory:5', 'lexical:10', 'lexical:10+memory:5']
>>> plan_from_budgets({"memory": 5}, specs, "fixed_plan").budgets
(('lexical', 0), ('memory', 5))
>>> plan_from_budgets({"memory": 7}, specs, "fixed_plan")
Traceback (most recent call last):
...
ltrr_server.errors.InvalidArgument: fixed_plan.memory: budget 7 is not on the ladder [0, 5]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ltrr_server.config import StrategySpec
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import Namespaces


@dataclass(frozen=True)
class Plan:
    id: str
    # (strategy name, budget) for every strategy, in configuration order; 0 = does not run.
    budgets: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.budgets)

    def running(self) -> list[tuple[str, int]]:
        return [(s, b) for s, b in self.budgets if b > 0]


def plan_id(budgets: Sequence[tuple[str, int]]) -> str:
    return "+".join(f"{s}:{b}" for s, b in budgets if b > 0)


def make_plans(specs: Sequence[StrategySpec]) -> list[Plan]:
    plans = []
    for combo in itertools.product(*(sorted(s.budgets) for s in specs)):
        budgets = tuple((s.name, b) for s, b in zip(specs, combo, strict=True))
        if any(b > 0 for _, b in budgets):
            plans.append(Plan(plan_id(budgets), budgets))
    return plans


def plan_from_budgets(budgets: Mapping[str, int], specs: Sequence[StrategySpec], field: str) -> Plan:
    """A caller's fixed plan (strategy -> budget), checked against the ladders."""
    known = {s.name: s for s in specs}
    for name, b in budgets.items():
        spec = known.get(name)
        if spec is None:
            raise InvalidArgument(f"{field}.{name}", f"unknown strategy; known: {', '.join(known)}")
        if b not in spec.budgets:
            raise InvalidArgument(f"{field}.{name}", f"budget {b} is not on the ladder {list(spec.budgets)}")
    full = tuple((s.name, int(budgets.get(s.name, 0))) for s in specs)
    if not any(b for _, b in full):
        raise InvalidArgument(field, "runs no strategy")
    return Plan(plan_id(full), full)


def plan_features(plan: Plan, max_total: int, stats: Mapping[str, tuple[float, float]]) -> Namespaces:
    """The plan as action features: each strategy's budget (kind and budget), the total drawn,
    and each running strategy's recent hit rate and latency (ms)."""
    p: list[tuple[str, str | float]] = [(s, str(b)) for s, b in plan.budgets]
    p.append(("total", round(math.log1p(plan.total) / math.log1p(max(max_total, 1)), 4)))
    r: list[tuple[str, str | float]] = []
    for s, _ in plan.running():
        hit, ms = stats.get(s, (0.0, 0.0))
        r.append((f"{s}_hit", hit))
        r.append((f"{s}_ms", ms))
    return [("P", p), ("R", r)]
