"""Off-policy estimators of a target policy's mean reward from logged decisions, with 95% intervals.

For logged events i = 1..n with reward r_i, logged action a_i drawn with probability p_i, and the
target's probability t_i of that same action, the importance weight is w_i = t_i / p_i and:

- IPS (inverse propensity scoring): mean(w_i r_i);
- SNIPS (self-normalized IPS): sum(w_i r_i) / sum(w_i);
- DR (doubly robust): mean(qt_i + w_i (r_i - q_i)), where q_i is a reward model's estimate for the
  logged action and qt_i its expectation under the target, sum_a target(a | x_i) q(x_i, a).

These are the textbook formulas, and Open Bandit Pipeline's ``InverseProbabilityWeighting``,
``SelfNormalizedInverseProbabilityWeighting`` and ``DoublyRobust`` give the same values
(``tests/server/ope/test_estimators.py`` compares them on the Open Bandit Dataset sample).

Intervals are normal ones from the per-event terms' standard error (for SNIPS by the delta
method): cheap for a million events, where OBP's bootstrap would resample each one 10,000 times.
On a synthetic world (logged probabilities 0.04 to 0.42) they covered the true value in 94 to 99
of 100 runs of 500 to 10,000 events each (``tests/server/ope/test_estimators.py``).

Two targets estimated over the same events are compared by their paired difference
(``Terms.minus``): the mean of the per-event differences of their terms, whose standard error
leaves out what the two share. Two policies that agree on most events differ by little on those
events, so the paired interval is narrower than the two separate ones: 0.71 as wide as the two
combined in the tests' world, where two targets agree in three context types of four.

>>> import numpy as np
>>> r, w = np.array([1.0, 0.0, 1.0, 0.0]), np.array([2.0, 0.5, 0.5, 1.0])
>>> ips(r, w).value, snips(r, w).value
(0.625, 0.625)
>>> round(dr(r, w, q_logged=np.full(4, 0.5), q_target=np.full(4, 0.5)).value, 4)
0.625
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

# The two-sided 95% quantile of the standard normal distribution.
Z95 = 1.959963984540054
NAMES = ("ips", "snips", "dr")


@dataclass(frozen=True)
class Estimate:
    """A policy value with its standard error and 95% interval."""

    value: float
    std_error: float
    lower: float
    upper: float

    @classmethod
    def from_terms(cls, value: float, terms: Array) -> Estimate:
        """``value`` with the interval of the mean of ``terms`` (whose mean is, or linearizes, it)."""
        n = len(terms)
        se = float(np.std(terms, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        if not (math.isfinite(value) and math.isfinite(se)):  # nothing to estimate from
            return cls(value, math.inf, -math.inf, math.inf)
        return cls(value, se, value - Z95 * se, value + Z95 * se)


@dataclass(frozen=True)
class Terms:
    """An estimate's value and its per-event terms: the terms' mean is the value, or (SNIPS) its
    linearization, so their spread gives the interval and two targets' terms over the same events
    give their paired difference.

    >>> import numpy as np
    >>> r = np.array([1.0, 0.0, 1.0, 0.0])
    >>> a, b = ips_terms(r, np.array([2.0, 0.0, 2.0, 0.0])), ips_terms(r, np.array([1.0, 1.0, 1.0, 1.0]))
    >>> d = a.minus(b)
    >>> a.value, b.value, d.value, round(d.std_error, 3), round(a.estimate().std_error, 3)
    (1.0, 0.5, 0.5, 0.289, 0.577)
    """

    value: float
    terms: Array

    def estimate(self) -> Estimate:
        return Estimate.from_terms(self.value, self.terms)

    def minus(self, other: Terms) -> Estimate:
        """This value minus ``other``'s, both over the same events, with the paired interval."""
        if len(self.terms) != len(other.terms):
            raise ValueError(f"{len(self.terms)} events against {len(other.terms)}: not paired")
        return Estimate.from_terms(self.value - other.value, self.terms - other.terms)


def _check(rewards: Array, weights: Array) -> None:
    if len(rewards) != len(weights):
        raise ValueError(f"{len(rewards)} rewards but {len(weights)} weights")
    if len(rewards) == 0:
        raise ValueError("no events")


def ips_terms(rewards: Array, weights: Array) -> Terms:
    _check(rewards, weights)
    terms = weights * rewards
    return Terms(float(np.mean(terms)), terms)


def snips_terms(rewards: Array, weights: Array) -> Terms:
    _check(rewards, weights)
    mean_w = float(np.mean(weights))
    if mean_w == 0.0:  # the target never takes a logged action: nothing to estimate from
        return Terms(math.nan, np.full(len(rewards), math.nan))
    value = float(np.sum(weights * rewards) / np.sum(weights))
    # Delta method: the estimate linearizes to mean(w (r - value)) / mean(w).
    return Terms(value, weights * (rewards - value) / mean_w)


def dr_terms(rewards: Array, weights: Array, q_logged: Array, q_target: Array) -> Terms:
    _check(rewards, weights)
    terms = q_target + weights * (rewards - q_logged)
    return Terms(float(np.mean(terms)), terms)


def ips(rewards: Array, weights: Array) -> Estimate:
    """Inverse propensity scoring: unbiased when every logged probability is right and positive."""
    return ips_terms(rewards, weights).estimate()


def snips(rewards: Array, weights: Array) -> Estimate:
    """Self-normalized IPS: slightly biased, far less variable when the weights are large."""
    return snips_terms(rewards, weights).estimate()


def dr(rewards: Array, weights: Array, q_logged: Array, q_target: Array) -> Estimate:
    """Doubly robust: the reward model's estimate corrected by the weighted residuals; unbiased
    when either the logged probabilities or the reward model is right."""
    return dr_terms(rewards, weights, q_logged, q_target).estimate()


def mean(rewards: Array) -> Estimate:
    """The logged policy's own value: the mean logged reward."""
    _check(rewards, rewards)
    return Estimate.from_terms(float(np.mean(rewards)), rewards)


def effective_sample_size(weights: Array) -> float:
    """(sum w)^2 / sum w^2: how many on-policy events the weighted ones are worth."""
    sq = float(np.sum(weights * weights))
    return float(np.sum(weights)) ** 2 / sq if sq > 0 else 0.0
