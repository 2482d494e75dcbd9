"""Problems for the bandit suite: each a world that draws contexts and knows every action's expected reward.

One tiny interface (``World``): ``actions`` (ids and features, sent with every request),
``draw(t)`` (the context of event ``t`` as request features, and the expected reward of every
action in it). The suite keeps the rest: which action a policy chose, the reward it saw (a
Bernoulli draw of the expected reward), the regret against the best action, against uniform
random and against the best fixed action.

The kinds of problem, after the contextual bandit bake-off (Bietti, Agarwal, Langford, JMLR 2021):

- ``logistic``: clicks from a logistic model with user-by-action and device-by-action effects and
  best-versus-second gaps of a few points, as a search frontend sees them (10 actions, or 50 with
  shared action features); ``drift`` changes the user effects half-way; ``sparse`` has a fifth of
  the clicks.
- supervised data sets shipped inside scikit-learn (no download), turned into bandits: one action
  per class, reward 1 for the true class (Bietti et al.'s conversion).
- the demo's world (segments by time of day, large gaps).

Delayed and missing rewards are the suite's to apply (``Problem.delay``, ``Problem.missing``).

>>> w = LogisticWorld(seed=1)
>>> features, expected = w.draw(0)
>>> len(expected) == len(w.actions) == 10 and sorted(features) == ["d", "n", "u"]
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Request features: namespace -> feature -> value, as ``ltrr_client.client.decide_request`` takes them.
Features = dict[str, dict[str, str | float]]


class World(Protocol):
    name: str
    actions: list[tuple[str, Features]]

    def draw(self, t: int) -> tuple[Features, np.ndarray]:
        """The context of event ``t`` and every action's expected reward in it."""
        ...


class LogisticWorld:
    """Bernoulli clicks from ``sigmoid(base + user x action + device x action + x * slope)``.

    A user segment (``segments`` of them), a device (3) and one number make the context; actions
    carry a category (``categories`` of them) shared by several actions. With ``drift_at``, the
    user-by-action effects are drawn again from that event on: the best actions change.
    """

    def __init__(self, seed: int, n_actions: int = 10, segments: int = 20, categories: int = 3,
                 drift_at: int | None = None, name: str = "logistic10", base: float = -1.5) -> None:
        rng = np.random.default_rng(seed)
        self.name = name
        self._segments = segments
        self._base = rng.normal(base, 0.3, n_actions)
        # Half of a user's taste is for a category, half for the action itself: a model that
        # crosses the user with the action's features learns from every action of a category.
        cats = rng.integers(0, categories, n_actions)
        self._user = [self._tastes(rng, segments, n_actions, cats, categories) for _ in range(2)]
        self._device = rng.normal(0.0, 0.3, (3, n_actions))
        self._slope = rng.normal(0.0, 0.3, n_actions)
        self._drift_at = drift_at
        self._draws = np.random.default_rng(seed + 7919)
        self.actions: list[tuple[str, Features]] = [
            (f"a{i}", {"A": {"cat": f"c{cats[i]}"}}) for i in range(n_actions)]

    @staticmethod
    def _tastes(rng: np.random.Generator, segments: int, n: int, cats: np.ndarray, categories: int) -> np.ndarray:
        by_cat = rng.normal(0.0, 0.3, (segments, categories))
        return by_cat[:, cats] + rng.normal(0.0, 0.25, (segments, n))

    def draw(self, t: int) -> tuple[Features, np.ndarray]:
        r = self._draws
        u, d, x = int(r.integers(self._segments)), int(r.integers(3)), float(r.random())
        user = self._user[1 if self._drift_at is not None and t >= self._drift_at else 0]
        z = self._base + user[u] + self._device[d] + self._slope * x
        return {"u": {"seg": f"s{u}"}, "d": {"dev": f"d{d}"}, "n": {"x": round(x, 4)}}, 1.0 / (1.0 + np.exp(-z))


class SupervisedWorld:
    """A classification data set as a bandit: one action per class, reward 1 for the true class.

    Features are standardized and sent as numbers in namespace ``f``; events cycle through a
    shuffled copy of the rows.
    """

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.name = name
        x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        order = np.random.default_rng(seed).permutation(len(y))
        self._x, self._y = x[order], y[order]
        self._classes = sorted(set(int(c) for c in y))
        self.actions = [(f"c{c}", {}) for c in self._classes]

    def draw(self, t: int) -> tuple[Features, np.ndarray]:
        i = t % len(self._y)
        expected = np.zeros(len(self._classes))
        expected[self._classes.index(int(self._y[i]))] = 1.0
        return {"f": {f"x{j}": round(float(v), 4) for j, v in enumerate(self._x[i]) if v != 0.0}}, expected


def sklearn_world(dataset: str, seed: int) -> SupervisedWorld:
    from sklearn import datasets

    loaders: dict[str, Callable[..., object]] = {
        "digits": datasets.load_digits, "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
    }
    bunch = loaders[dataset]()
    return SupervisedWorld(dataset, np.asarray(bunch.data, dtype=float),  # type: ignore[attr-defined]
                           np.asarray(bunch.target), seed)  # type: ignore[attr-defined]


class DemoWorld:
    """The demo's world (``ltrr simulate``): six segments by two parts of the day, four actions."""

    def __init__(self, seed: int) -> None:
        from ltrr_client.simulate import PARTS
        from ltrr_client.simulate import World as Demo

        self.name = "demo"
        self._world = Demo(6, 4, seed=seed)
        self._parts = PARTS
        self._rng = np.random.default_rng(seed + 104729)
        self.actions = [(a, {}) for a in ("news", "sports", "music", "movies")]

    def draw(self, t: int) -> tuple[Features, np.ndarray]:
        s, p = int(self._rng.integers(6)), int(self._rng.integers(len(self._parts)))
        rates = np.array([self._world.rate(s, p, a) for a in range(4)])
        return {"user": {"segment": f"s{s}"}, "time": {"part": self._parts[p]}}, rates


@dataclass(frozen=True)
class Problem:
    """A world, how long it runs, and how its rewards reach the server."""

    name: str
    make: Callable[[int], World]
    events: int
    # Rewards arrive this many events after their decision; this share of them never arrives
    # (the policy's join window then closes with its default reward, 0: no click).
    delay: int = 0
    missing: float = 0.0


PROBLEMS: dict[str, Problem] = {p.name: p for p in (
    Problem("logistic10", lambda s: LogisticWorld(s), 20_000),
    Problem("logistic50", lambda s: LogisticWorld(s, n_actions=50, segments=50, categories=8, name="logistic50"),
            30_000),
    Problem("drift", lambda s: LogisticWorld(s, drift_at=15_000, name="drift"), 30_000),
    Problem("delayed", lambda s: LogisticWorld(s, name="delayed"), 20_000, delay=2_000, missing=0.3),
    # Few clicks, as many search and recommendation pages get: logistic10's world with every base
    # 2 lower in logit (the best action's expected reward 0.067 instead of 0.34), twice as long.
    Problem("sparse", lambda s: LogisticWorld(s, name="sparse", base=-3.5), 40_000),
    Problem("digits", lambda s: sklearn_world("digits", s), 20_000),
    Problem("wine", lambda s: sklearn_world("wine", s), 5_000),
    Problem("breast_cancer", lambda s: sklearn_world("breast_cancer", s), 5_000),
    Problem("demo", lambda s: DemoWorld(s), 10_000),
)}
