"""A policy as the decision path sees it: its spec, its serving model and its window stats."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ltrr_server.config import ActionSpec, PolicySpec
from ltrr_server.features import action_line, actions_to_json
from ltrr_server.policy.model import PolicyModel
from ltrr_server.regret import RewardWindow


def sample(probs: Sequence[float], u: float) -> int:
    """Index drawn from ``probs`` with the uniform number ``u`` in [0, 1).

    >>> sample([0.2, 0.5, 0.3], 0.1), sample([0.2, 0.5, 0.3], 0.6), sample([0.2, 0.5, 0.3], 0.99)
    (0, 1, 2)
    """
    total = sum(probs)
    target = u * total
    acc = 0.0
    last = 0
    for i, p in enumerate(probs):
        if p <= 0:
            continue
        acc += p
        last = i
        if target < acc:
            return i
    return last


def draw_slots(slot_probs: Callable[[int, list[int]], list[float]], slots: int, rng: random.Random
               ) -> list[tuple[int, float, list[float]]]:
    """Draws one distinct action per slot, in order: ``slot_probs(s, taken)`` is slot s's
    distribution given the actions drawn for the slots before it, renormalized over the actions
    still free. Returns (chosen index, its probability, the slot's distribution).

    >>> rng = random.Random(1)
    >>> [(i, round(p, 2)) for i, p, _ in draw_slots(lambda s, taken: [0.5, 0.25, 0.25], 3, rng)]
    [(0, 0.5), (2, 0.5), (1, 1.0)]
    """
    if slots == 1:  # one slot: the model's distribution as it is
        probs = slot_probs(0, [])
        idx = sample(probs, rng.random())
        return [(idx, probs[idx], probs)]
    taken: list[int] = []
    out = []
    for s in range(slots):
        probs = slot_probs(s, taken)
        free = [0.0 if i in taken else p for i, p in enumerate(probs)]
        total = sum(free)
        if total <= 0:  # nothing left with mass: uniform over what is free
            free = [0.0 if i in taken else 1.0 for i in range(len(probs))]
            total = sum(free)
        dist = [p / total for p in free]
        idx = sample(dist, rng.random())
        taken.append(idx)
        out.append((idx, dist[idx], dist))
    return out


@dataclass
class PolicyRuntime:
    spec: PolicySpec
    revision: int
    lineage: int
    lineage_start_seq: int
    created_at: float
    updated_at: float
    serving: PolicyModel
    model_version: int
    window: RewardWindow
    # Joined events not yet added to the window: added per batch of joins (one lock, not one per event).
    window_batch: list[tuple[str, float, float, bool, float | None]] = field(default_factory=list)
    action_ids: list[str] = field(default_factory=list)
    action_lines: list[str] = field(default_factory=list)
    actions_json: str = "[]"
    # Joined events handed to the learner (compared with what it has learned: the lag).
    enqueued: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    true_regret_total: float = 0.0
    # Of this lineage's learned rewards that are not 0: their count and the sum of their sizes
    # (reward_scale_advice), and whether it has said so already.
    nonzero_rewards: int = 0
    nonzero_reward_sum: float = 0.0
    reward_scale_told: bool = False
    last_lag_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.set_actions(self.spec.actions)

    def set_actions(self, actions: Sequence[ActionSpec]) -> None:
        """Precomputes the configured actions' VW lines and log form once, not per decision."""
        self.action_ids = [a.id for a in actions]
        self.action_lines = [action_line(a.id, a.features) for a in actions]
        self.actions_json = actions_to_json((a.id, a.features) for a in actions)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def reward_scale_advice(self, min_rewards: int = 200, factor: float = 10.0) -> str:
        """Once per lineage, after ``min_rewards`` rewards other than 0: advice when their typical
        size is ``factor`` or more away from the spec's reward_scale, which the model learns best
        near 1 (config.PolicySpec.reward_scale); '' otherwise.

        >>> rt = PolicyRuntime(PolicySpec(name="p"), 1, 1, 1, 0.0, 0.0, None, 0, None)
        >>> rt.nonzero_rewards, rt.nonzero_reward_sum = 200, 200 * 37.5
        >>> rt.reward_scale_advice()
        'its rewards other than 0 are 37.5 on average, learned as 37.5 (reward_scale 1): set reward_scale to about 37.5'
        >>> rt.reward_scale_advice()  # said once
        ''
        """
        if self.reward_scale_told or self.nonzero_rewards < min_rewards:
            return ""
        typical = self.nonzero_reward_sum / self.nonzero_rewards
        scale = self.spec.reward_scale
        if 1 / factor < typical / scale < factor:
            return ""
        self.reward_scale_told = True
        return (f"its rewards other than 0 are {typical:.3g} on average, learned as {typical / scale:.3g} "
                f"(reward_scale {scale:g}): set reward_scale to about {typical:.3g}")
