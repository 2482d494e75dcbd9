"""The decision path's direct calls into VW agree with the public wrapper, for cb and ccb."""

from __future__ import annotations

import random

import numpy as np
import pytest
import vowpal_wabbit_next as vw

from ltrr_server.config import PolicySpec
from ltrr_server.features import SLOT_NAMESPACE
from ltrr_server.policy.model import ModelFrame, PolicyModel
from tests.helpers import poisoned_coin_model

ACTIONS = ["|A id=a", "|A id=b", "|A id=c", "|A id=d"]


def wrapper_predict(model: PolicyModel, shared: str, slots: int) -> object:
    parse = model._parser.parse_line
    if model.frame.kind == "cb":
        return model._ws.predict_one([parse(shared)] + [parse(a) for a in ACTIONS])
    return model._ws.predict_one([parse(f"ccb {shared}")] + [parse(f"ccb action {a}") for a in ACTIONS]
                                 + [parse(f"ccb slot |{SLOT_NAMESPACE} slot={s}") for s in range(slots)])


@pytest.mark.parametrize("kind,slots", [("cb", 1), ("ccb", 3)])
def test_direct_prediction_matches_the_public_api(kind: str, slots: int) -> None:
    model = PolicyModel.create(PolicySpec(name="p", kind=kind, slots=slots, exploration="softmax",
                                          interactions=("uA",)))
    rng = random.Random(0)
    for step in range(300):
        shared = f"shared |user s=u{step % 5}"
        labels = [(rng.randrange(4), -float(rng.random() < 0.5), 0.25) for _ in range(slots)]
        model.learn_one(shared, ACTIONS, labels if kind == "ccb" else labels[:1], slots)
        if step % 50 == 0:
            given = [2, 0]  # the actions of the first two slots, as drawn or logged
            ours = model.predict_one(shared, ACTIONS, slots, given)
            theirs = wrapper_predict(model, shared, slots)
            # CCB: VW leaves out of later slots the actions it put in the earlier ones, not the
            # ones given, so only the first slot is the same.
            first = theirs if kind == "cb" else theirs[0]  # type: ignore[index]
            expected = [0.0] * 4
            for idx, p in first:  # type: ignore[attr-defined]
                expected[idx] = p
            assert ours[0] == pytest.approx(expected)
            assert len(ours) == slots and all(sum(s) == pytest.approx(1.0) for s in ours)
            # Each later slot: every action not given to an earlier one, and only those.
            for s in range(1, slots):
                assert [p > 0 for p in ours[s]] == [i not in given[:s] for i in range(4)], (s, ours[s])
    assert vw.__version__ == "0.7.0", "the direct calls are checked against this version only"


@pytest.mark.parametrize("cb_type", ["dm", "mtr"])
@pytest.mark.parametrize("kind,slots", [("cb", 1), ("ccb", 3)])
def test_direct_learning_gives_the_public_apis_model(kind: str, slots: int, cb_type: str) -> None:
    # mtr hands VW each logged probability (its importance weight is 1/p); dm hands it 1 (weight 1).
    spec = PolicySpec(name="p", kind=kind, slots=slots, exploration="squarecb", cb_type=cb_type)
    ours, theirs = PolicyModel.create(spec), PolicyModel.create(spec)
    rng = random.Random(1)
    for step in range(300):
        shared = f"shared |user s=u{step % 5} n:{rng.random()!r}"
        labels = [(rng.randrange(4), -float(rng.random() < 0.5), rng.choice([0.01, 0.25, 0.9])) for _ in range(slots)]
        ours.learn_one(shared, ACTIONS, labels, slots)
        parse = theirs._parser.parse_line
        given = labels if cb_type == "mtr" else [(i, c, 1.0) for i, c, _ in labels]
        lines = [ex_line for ex_line in _labelled_lines(theirs, shared, given, slots)]
        theirs._ws.learn_one([parse(line) for line in lines])
    assert ours.to_bytes() == theirs.to_bytes()


def test_dm_learns_an_explored_click_once_and_mtr_one_over_p_times() -> None:
    # One click on an action shown with probability 0.01: mtr learns it as VW's importance-weighted
    # regression does (weight 100), dm as a decision shown for sure (weight 1).
    def learned(cb_type: str, prob: float) -> bytes:
        model = PolicyModel.create(PolicySpec(name="p", cb_type=cb_type))
        model.learn_one("shared |user s=a", ACTIONS, [(2, -1.0, prob)])
        assert model.copy().frame.cb_type == cb_type
        return model.to_bytes()

    assert learned("dm", 0.01) == learned("mtr", 1.0) == learned("dm", 1.0)
    assert learned("mtr", 0.01) != learned("dm", 0.01)


def test_a_published_coin_betting_copy_learns_on_as_the_original() -> None:
    # Coin betting keeps a wealth and a gradient sum per weight: the learner publishes copies and
    # restores snapshots through to_bytes, and a copy that lost them would learn on differently
    # (it would bet from its starting wealth again).
    original = PolicyModel.create(PolicySpec(name="p", optimizer="coin"))
    rng = random.Random(2)
    steps = [(f"shared |user s=u{i % 5}", rng.randrange(4), -float(rng.random() < 0.3)) for i in range(400)]
    for shared, idx, cost in steps[:200]:
        original.learn_one(shared, ACTIONS, [(idx, cost, 1.0)])
    copy = original.copy()
    for model in (original, copy):
        for shared, idx, cost in steps[200:]:
            model.learn_one(shared, ACTIONS, [(idx, cost, 1.0)])
    # The same weights (the bytes differ in the header's running statistics, under adagrad too).
    for u in range(5):
        shared = f"shared |user s=u{u}"
        assert copy.predict_one(shared, ACTIONS) == original.predict_one(shared, ACTIONS)
    # ... and it learned: the action clicked most for u0 is its greedy choice there.
    clicks = [0.0] * 4
    for shared, idx, cost in steps:
        clicks[idx] -= cost if shared.endswith("u0") else 0.0
    probs = copy.predict_one("shared |user s=u0", ACTIONS)[0]
    assert probs.index(max(probs)) == clicks.index(max(clicks))


def _labelled_lines(model: PolicyModel, shared: str, labels: list[tuple[int, float, float]], slots: int) -> list[str]:
    if model.frame.kind == "cb":
        idx, cost, prob = labels[0]
        lines = [shared, *ACTIONS]
        lines[idx + 1] = f"0:{cost!r}:{prob!r} {ACTIONS[idx]}"
        return lines
    return ([f"ccb {shared}"] + [f"ccb action {a}" for a in ACTIONS]
            + [f"ccb slot {i}:{c!r}:{p!r} |{SLOT_NAMESPACE} slot={s}" for s, (i, c, p) in enumerate(labels)])


@pytest.mark.parametrize("kind", ["cb", "ccb"])
def test_a_cost_past_the_reward_bound_leaves_the_weights_finite(kind: str) -> None:
    # The API refuses rewards past bounds.MAX_ABS_REWARD; a log written before that bound may
    # still hold one. Unclamped, a cost of 1e300 (read by VW as infinite) overflows the weights and
    # the policy never learns again.
    model = PolicyModel.create(PolicySpec(name="p", kind=kind, epsilon=0.1, interactions=("uA",)))
    rng = random.Random(0)
    for step in range(200):
        cost = -1e300 if step == 100 else -float(rng.random() < 0.5)
        model.learn_one(f"shared |user s=u{step % 3} n:{rng.random()!r}", ACTIONS, [(step % 4, cost, 0.25)])
    assert np.isfinite(np.asarray(model._ws.weights())).all()


@pytest.mark.parametrize("optimizer", ["adagrad", "coin"])
def test_a_reward_scale_learns_scaled_rewards_as_rewards_of_one(optimizer: str) -> None:
    # Revenue of 0 or 250 with reward_scale 250 is learned exactly as clicks of 0 or 1: the same
    # probabilities, also after a round trip through bytes with the scale given again (the
    # learner's copies and restores), while unscaled revenue learns another model.
    clicks = PolicyModel.create(PolicySpec(name="p", optimizer=optimizer))
    revenue = PolicyModel.create(PolicySpec(name="p", optimizer=optimizer, reward_scale=250.0))
    unscaled = PolicyModel.create(PolicySpec(name="p", optimizer=optimizer))
    rng = random.Random(5)
    for i in range(300):
        shared, idx = f"shared |user s=u{i % 3}", rng.randrange(4)
        click = float(idx == i % 3 and rng.random() < 0.7)
        clicks.learn_one(shared, ACTIONS, [(idx, -click, 0.25)])
        revenue.learn_one(shared, ACTIONS, [(idx, -250.0 * click, 0.25)])
        unscaled.learn_one(shared, ACTIONS, [(idx, -250.0 * click, 0.25)])
        if i == 150:
            revenue = PolicyModel.from_bytes(revenue.to_bytes(), revenue.frame)
            assert revenue.copy().frame == ModelFrame("cb", "dm", 250.0)
    for u in range(3):
        shared = f"shared |user s=u{u}"
        assert revenue.predict_one(shared, ACTIONS) == clicks.predict_one(shared, ACTIONS)
    assert any(unscaled.predict_one(f"shared |user s=u{u}", ACTIONS) != clicks.predict_one(f"shared |user s=u{u}",
                                                                                          ACTIONS) for u in range(3))


def _poisoned_coin_bytes() -> bytes:
    return poisoned_coin_model(PolicySpec(name="p", optimizer="coin"), "shared |user s=u0", ACTIONS)


@pytest.mark.parametrize("value", ["3e-10", "1e-20", "-7.5e-13"])
def test_coin_betting_keeps_finite_probabilities_on_tiny_feature_values(value: str) -> None:
    # VW's own coin betting turns NaN on such values; the model reads them as 0 (and knows it is
    # coin betting after a round trip through bytes, where the learner's copies come from).
    poisoned = PolicyModel.from_bytes(_poisoned_coin_bytes(), ModelFrame("cb", "mtr"))
    assert not poisoned.finite() and not np.isfinite(poisoned.predict_one("shared |user s=u0 x:0.5", ACTIONS)[0]).any()
    original = PolicyModel.create(PolicySpec(name="p", optimizer="coin"))
    for model in (original, PolicyModel.from_bytes(original.to_bytes(), ModelFrame("cb", "mtr"))):
        assert model.coin
        rng = random.Random(3)
        for i in range(300):
            shared = f"shared |user s=u{i % 3} x:{value} y:{rng.random()!r}"
            probs = model.predict_one(shared, ACTIONS)[0]
            assert all(np.isfinite(probs)) and sum(probs) == pytest.approx(1.0), (i, probs)
            idx = rng.randrange(4)
            model.learn_one(shared, ACTIONS, [(idx, -float(idx == i % 3), 0.25)])
        assert model.finite()
        # It still learned what the other features say: u0's rewarded action is its greedy one.
        probs = model.predict_one(f"shared |user s=u0 x:{value} y:0.5", ACTIONS)[0]
        assert probs.index(max(probs)) == 0


def test_adagrad_reads_tiny_values_as_they_are() -> None:
    # AdaGrad learns a feature scaled down to 1e-10 as at 1: its values are not floored.
    big, tiny = PolicyModel.create(PolicySpec(name="p")), PolicyModel.create(PolicySpec(name="p"))
    assert not tiny.coin
    rng = random.Random(4)
    for _ in range(300):
        x = rng.uniform(-1, 1)
        best = 0 if x > 0 else 1
        idx = rng.randrange(4)
        big.learn_one(f"shared |user x:{x!r}", ACTIONS, [(idx, -float(idx == best), 0.25)])
        tiny.learn_one(f"shared |user x:{x * 1e-10!r}", ACTIONS, [(idx, -float(idx == best), 0.25)])
    for x in (0.8, -0.8):
        assert (tiny.predict_one(f"shared |user x:{x * 1e-10!r}", ACTIONS)[0]
                == pytest.approx(big.predict_one(f"shared |user x:{x!r}", ACTIONS)[0], abs=1e-3))
        probs = tiny.predict_one(f"shared |user x:{x * 1e-10!r}", ACTIONS)[0]
        assert probs.index(max(probs)) == (0 if x > 0 else 1)


def test_a_model_that_turned_non_finite_goes_back_to_the_last_finite_one() -> None:
    from ltrr_server.learner.state import LearnerState

    good = PolicyModel.create(PolicySpec(name="p", optimizer="coin"))
    good.learn_one("shared |user s=u0", ACTIONS, [(2, -1.0, 1.0)])
    state = LearnerState("p", 1, PolicyModel.from_bytes(_poisoned_coin_bytes(), ModelFrame("cb", "mtr")), 0, 3,
                         last_good=good.to_bytes())
    assert not state.keep_finite()
    assert state.model.finite() and state.model.coin
    probe = "shared |user s=u0 x:0.5"
    assert state.model.predict_one(probe, ACTIONS) == good.predict_one(probe, ACTIONS)
    assert state.keep_finite()
