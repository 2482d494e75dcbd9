"""Windowed reward, exploration and regret estimates for one policy.

The estimated regret compares the logged mean reward with the best fixed action in
hindsight, each action's value estimated by self-normalized IPS over the window:
``V(a) = sum(r_i 1[a_i = a] / p_i) / sum(1[a_i = a] / p_i)``. It needs no ground
truth and may be negative (the contextual policy beats every fixed action).

>>> w = RewardWindow(size=100, min_support=1)
>>> for _ in range(10):
...     w.add("a", 0.5, 1.0, explored=False, true_regret=None)
...     w.add("b", 0.5, 0.0, explored=True, true_regret=None)
>>> s = w.stats()
>>> s["mean_reward"], s["estimated_regret"], s["exploration_share"], s["greedy_mean_reward"]
(0.5, 0.5, 0.5, 1.0)

An action served at probability 1 that was not the policy's greedy choice (an apprentice
serving its caller's baseline) is not exploration; the greedy share counts it as not greedy:

>>> w = RewardWindow(size=100, min_support=1)
>>> w.add("a", 1.0, 1.0, explored=True, true_regret=None)
>>> w.add("b", 1.0, 0.0, explored=False, true_regret=None)
>>> s = w.stats()
>>> s["exploration_share"], s["greedy_share"], s["greedy_mean_reward"]
(0.0, 0.5, 0.0)
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque


class RewardWindow:
    """The last ``size`` joined events of a policy; O(1) per event, thread-safe reads."""

    def __init__(self, size: int, min_support: int = 20) -> None:
        self._size = size
        self._min_support = min_support
        self._events: deque[tuple[str, float, float, bool, float | None]] = deque()
        self._reward_sum = 0.0
        # Drawn at a probability below 1 and not the policy's greedy choice: exploration.
        self._explored = 0
        # Served at probability 1 and not its greedy choice (an apprentice serving its baseline):
        # not exploration, though the policy's greedy choice was not served either. Until
        # 2026-12-01 an apprentice's disagreement with its baseline was shown as exploration.
        self._disagreed = 0
        # Reward of the events whose action was the policy's greedy choice (not explored).
        self._greedy_reward_sum = 0.0
        self._regret_sum = 0.0
        self._regret_n = 0
        # action -> [sum r/p, sum 1/p, count]
        self._ips: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._lock = threading.Lock()

    def add(self, action: str, prob: float, reward: float, explored: bool, true_regret: float | None) -> None:
        self.add_many([(action, prob, reward, explored, true_regret)])

    def add_many(self, events: list[tuple[str, float, float, bool, float | None]]) -> None:
        """Adds joined events: (chosen action, its probability, reward, explored, true regret or None)."""
        # One pass on local variables: this runs for every joined reward.
        with self._lock:
            ips, window, size = self._ips, self._events, self._size
            reward_sum, explored_n, greedy_sum = self._reward_sum, self._explored, self._greedy_reward_sum
            disagreed_n = self._disagreed
            regret_sum, regret_n = self._regret_sum, self._regret_n
            for ev in events:
                window.append(ev)
                changes = ((ev, 1), (window.popleft(), -1)) if len(window) > size else ((ev, 1),)
                for (action, prob, reward, explored, regret), sign in changes:
                    w = 1.0 / (prob if prob > 1e-6 else 1e-6)
                    acc = ips[action]
                    acc[0] += sign * reward * w
                    acc[1] += sign * w
                    acc[2] += sign
                    if acc[2] == 0:
                        del ips[action]
                    reward_sum += sign * reward
                    if not explored:
                        greedy_sum += sign * reward
                    elif prob < 1.0:
                        explored_n += sign
                    else:  # served at probability 1 and not its greedy choice: an apprentice's baseline
                        disagreed_n += sign
                    if regret is not None:
                        regret_sum += sign * regret
                        regret_n += sign
            self._reward_sum, self._explored, self._greedy_reward_sum = reward_sum, explored_n, greedy_sum
            self._disagreed = disagreed_n
            self._regret_sum, self._regret_n = regret_sum, regret_n

    def stats(self) -> dict[str, float]:
        with self._lock:
            n = len(self._events)
            if n == 0:
                return {"mean_reward": 0.0, "estimated_regret": 0.0, "true_regret_mean": 0.0,
                        "exploration_share": 0.0, "greedy_share": 0.0, "greedy_mean_reward": 0.0, "events": 0.0}
            mean = self._reward_sum / n
            not_greedy = self._explored + self._disagreed
            values = [a[0] / a[1] for a in self._ips.values() if a[2] >= self._min_support and a[1] > 0]
            best = max(values) if values else mean
            return {
                "mean_reward": mean,
                "estimated_regret": best - mean,
                "true_regret_mean": self._regret_sum / self._regret_n if self._regret_n else 0.0,
                "exploration_share": self._explored / n,
                "greedy_share": (n - not_greedy) / n,
                "greedy_mean_reward": self._greedy_reward_sum / (n - not_greedy) if n > not_greedy else 0.0,
                "events": float(n),
            }
