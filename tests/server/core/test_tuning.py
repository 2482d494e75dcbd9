"""Tune's rule on evaluation results with known figures: switch only to a candidate whose paired
difference with the live configuration's replay is above zero for all the candidates at once."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ltrr_server.config import PolicySpec
from ltrr_server.core.tuning import _choose, candidate_grid, family_z
from ltrr_server.ope.estimators import Z95, Estimate
from ltrr_server.ope.evaluate import EvaluationResult, SlotResult, TargetResult

LIVE = PolicySpec(name="p")


def estimate(value: float, se: float) -> Estimate:
    return Estimate(value, se, value - Z95 * se, value + Z95 * se)


def result(rows: list[tuple[float, float, float]], logged: float = 0.30) -> EvaluationResult:
    """One target per row: (its estimate, its difference with the live replay, that difference's
    standard error); every estimate's own standard error is 0.01."""
    targets = [TargetResult(f"candidate {i}", [SlotResult(0, {"snips": estimate(v, 0.01)}, 1.0, 5.0, 15_000.0, 1.0,
                                                          {"snips": estimate(d, se)})])
               for i, (v, d, se) in enumerate(rows)]
    return EvaluationResult("p", 20_000, 0.0, 1.0, estimate(logged, 0.003), targets)


@pytest.mark.parametrize("candidates,rows,pick,why", [
    # A difference of 0.01 with standard error 0.004: above zero for one candidate (z 1.645)...
    (2, [(0.28, 0.0, 0.0), (0.29, 0.01, 0.004)], 1, "would switch to (apply to do it) the best candidate"),
    # ...not for twelve at once (z 2.64): 0.01 - 2.64 * 0.004 < 0.
    # It says how long a log would tell it: (2.64 * 0.004 / 0.01)^2 = 1.1 times these 20k events.
    (13, [(0.28, 0.0, 0.0), (0.29, 0.01, 0.004)] + [(0.27, -0.01, 0.004)] * 11, None,
     "no candidate is clearly better than the live configuration's replay: the best estimate's difference +0.01 "
     "has a lower bound of -0.000553 (95% for 12 candidates at once); a log about 1.1x as long (~22.3k events) "
     "would tell a difference that large; the live configuration stays"),
    # Both estimates under the live policy's logged mean (the replay is pessimistic), the
    # difference clear: the switch is made.
    (2, [(0.28, 0.0, 0.0), (0.29, 0.01, 0.001)], 1, "lower bound +0.008"),
    # The highest estimate is not clear, the second is: the second.
    (3, [(0.28, 0.0, 0.0), (0.31, 0.03, 0.02), (0.30, 0.02, 0.002)], 2,
     "the best candidate clearly better than it"),
    # The live configuration's own replay has the best estimate.
    (2, [(0.28, 0.0, 0.0), (0.27, -0.01, 0.004)], None, "policy's own configuration"),
], ids=["one candidate", "twelve candidates", "pessimistic replay", "second best", "own best"])
def test_the_rule(candidates: int, rows: list[tuple[float, float, float]], pick: int | None, why: str) -> None:
    specs = candidate_grid(LIVE)[:candidates]
    choice = _choose(result(rows), specs, 0, LIVE, apply=False)
    assert choice.index == pick, choice.reason
    assert why in choice.reason
    assert choice.recommended == (LIVE if pick is None else specs[pick])
    assert [c.estimate.value for c in choice.ranked] == sorted((r[0] for r in rows), reverse=True)


def test_a_candidate_exploring_less_is_ranked_but_not_recommended() -> None:
    """Replay credits a candidate for exploring less and never charges it for what it would not
    have learned: the same method turned down is set aside, even when it alone passes."""
    greedier = dataclasses.replace(LIVE, squarecb_gamma_scale=50.0)
    slower = dataclasses.replace(LIVE, learning_rate=0.25)
    rows = [(0.28, 0.0, 0.0), (0.30, 0.02, 0.001), (0.29, 0.01, 0.001)]
    choice = _choose(result(rows), [LIVE, greedier, slower], 0, LIVE, apply=True)
    assert choice.index == 2 and choice.recommended == slower
    assert "1 candidate exploring less than the live configuration set aside" in choice.reason
    assert choice.ranked[0].spec == greedier  # still ranked first by its estimate

    alone = _choose(result(rows[:2]), [LIVE, greedier], 0, LIVE, apply=True)
    assert alone.index is None and alone.recommended == LIVE
    # Its passing bound is not quoted as the best one that is "not clearly better".
    assert alone.reason == ("the best estimate among the rest is the policy's own configuration's: the live "
                            "configuration stays; 1 candidate exploring less than the live configuration set aside "
                            "(replay cannot judge that)")
    unclear = _choose(result([*rows[:2], (0.29, 0.01, 0.008)]), [LIVE, greedier, slower], 0, LIVE, apply=True)
    assert unclear.index is None
    assert unclear.reason.startswith("no candidate is clearly better than the live configuration's replay: the best "
                                     "estimate's difference +0.01 has a lower bound of -0.00")


def test_a_candidate_choosing_what_the_log_never_took_is_not_recommended() -> None:
    """On a log that did not explore, a replay's choices off the logged actions weigh nothing:
    its estimate is the reward where it agreed with the log. Over 1% of such choices, it is set aside."""
    faster, slower = (dataclasses.replace(LIVE, learning_rate=r) for r in (1.0, 0.25))
    rows = [(0.28, 0.0, 0.0), (0.80, 0.02, 0.001), (0.29, 0.01, 0.001)]
    unseen = result(rows)
    unseen.targets[1].slots[0].unlogged_share = 0.4
    unseen.targets[2].slots[0].unlogged_share = 0.01  # at the bound: still eligible
    choice = _choose(unseen, [LIVE, faster, slower], 0, LIVE, apply=True)
    assert choice.index == 2 and choice.recommended == slower
    assert choice.ranked[0].spec == faster and choice.ranked[0].unlogged_share == 0.4
    assert ("1 candidate choosing actions the log never took (over 1% of its choices) set aside (the log did not "
            "explore: what they would have earned is unknown)") in choice.reason
    unseen.targets[2].slots[0].unlogged_share = 0.02
    assert _choose(unseen, [LIVE, faster, slower], 0, LIVE, apply=True).index is None
    # The live configuration's own replay strays from the log: nothing can be compared there.
    unseen.targets[0].slots[0].unlogged_share = 0.67
    kept = _choose(unseen, [LIVE, faster, slower], 0, LIVE, apply=True)
    assert kept.index is None and kept.reason.startswith("the log did not explore: 67% of the live configuration's")


def test_a_candidate_resting_on_few_events_is_not_recommended() -> None:
    """Found from outside on the demo's retrieval policy (epsilon 0.02 over ~140 plans): a learning
    rate of 2 had an effective sample size of 2 of 3,003 events and cleared the family's bound."""
    faster, slower = (dataclasses.replace(LIVE, learning_rate=r) for r in (2.0, 0.25))
    thin = result([(0.88, 0.0, 0.0), (0.98, 0.098, 0.012), (0.89, 0.01, 0.002)])
    thin.targets[1].slots[0].effective_sample_size = 2.0
    choice = _choose(thin, [LIVE, faster, slower], 0, LIVE, apply=True)
    assert choice.index == 2 and choice.ranked[0].spec == faster and choice.ranked[0].effective_sample_size == 2.0
    assert ("1 candidate resting on fewer than 100 events (effective sample size) set aside (an interval on a few "
            "heavily weighted events is not to be trusted)") in choice.reason
    thin.targets[2].slots[0].effective_sample_size = 99.0
    assert _choose(thin, [LIVE, faster, slower], 0, LIVE, apply=True).index is None
    # The floor is not a share of the log: SquareCB's logs of 20k events kept candidates 181 to 3,488.
    thin.targets[2].slots[0].effective_sample_size = 181.0
    assert _choose(thin, [LIVE, faster, slower], 0, LIVE, apply=True).index == 2


NOT_ESTIMATED = "its model gave NaN or infinite probabilities at joined event 7 of 20000 (seq 7): it is not estimated"


def test_a_candidate_not_estimated_is_ranked_last_and_never_recommended() -> None:
    # Its replay's model turned NaN or infinite (ope.evaluate): no figures at all.
    specs = candidate_grid(LIVE)[:3]
    ok = result([(0.28, 0.0, 0.0), (0.29, 0.01, 0.001), (0.30, 0.02, 0.001)])
    ok.targets[2] = TargetResult("candidate 2", [], problem=NOT_ESTIMATED)
    choice = _choose(ok, specs, 0, LIVE, apply=True)
    assert choice.index == 1 and choice.recommended == specs[1]
    assert [c.spec for c in choice.ranked] == [specs[1], specs[0], specs[2]]
    assert choice.ranked[-1].problem == NOT_ESTIMATED and math.isnan(choice.ranked[-1].estimate.value)
    assert choice.reason.endswith("; 1 candidate not estimated (its replay's model turned NaN or infinite) "
                                  "ranked last")

    # The live configuration's own replay not estimated: nothing can be compared with it.
    own = result([(0.28, 0.0, 0.0), (0.29, 0.01, 0.001)])
    own.targets[0] = TargetResult("candidate 0", [], problem=NOT_ESTIMATED)
    for target in own.targets[1:]:
        target.slots[0].versus_baseline.clear()  # evaluate gives no pairing without the baseline
    kept = _choose(own, specs[:2], 0, LIVE, apply=True)
    assert kept.index is None and kept.recommended == LIVE
    assert "the live configuration's own replay was not estimated" in kept.reason


def test_family_z_is_one_sided_bonferroni() -> None:
    assert family_z(1) == pytest.approx(1.6448536, abs=1e-6)
    assert family_z(12) == pytest.approx(2.6382573, abs=1e-6)
    assert math.isclose(family_z(0), family_z(1))
