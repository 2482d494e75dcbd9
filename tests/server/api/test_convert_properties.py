"""Property tests of the request conversions: whatever a client sends, a conversion returns values
the core can use, or raises InvalidArgument naming a field of the request; nothing else."""

from __future__ import annotations

import math

import vowpal_wabbit_next as vw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltrr.v1 import admin_pb2, common_pb2, decisions_pb2, feedback_pb2
from ltrr_server.api import convert
from ltrr_server.api.routes import Undecodable, decoder
from ltrr_server.config import Limits
from ltrr_server.core.rewards import validate_reward
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import shared_line
from ltrr_server.policy.model import PolicyModel

LIMITS = Limits(max_features=16, max_actions=8)
_PARSER = vw.TextFormatParser(vw.Workspace(["--quiet"]))
text = st.text(max_size=300)
short = st.text(max_size=12)
numbers = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def features(draw: st.DrawFn) -> common_pb2.Feature:
    f = common_pb2.Feature(name=draw(st.one_of(short, text)))
    kind = draw(st.sampled_from(["str", "num", "none"]))
    if kind == "str":
        f.str = draw(st.one_of(short, text))
    elif kind == "num":
        f.num = draw(numbers)
    return f


namespaces = st.lists(
    st.builds(common_pb2.Namespace, name=st.one_of(short, text), features=st.lists(features(), max_size=6)),
    max_size=6,
)


@given(namespaces)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_namespaces_are_valid_or_refused_naming_the_field(msgs: list[common_pb2.Namespace]) -> None:
    try:
        ns = convert.namespaces(msgs, "context", LIMITS.max_features)
    except InvalidArgument as exc:
        assert exc.field.startswith("context")
        return
    assert sum(len(f) for _, f in ns) <= LIMITS.max_features
    for name, feats in ns:
        assert 0 < len(name) <= 256
        for fname, value in feats:
            assert 0 < len(fname) <= 256
            assert isinstance(value, str) and len(value) <= 256 or isinstance(value, float) and math.isfinite(value)


@given(namespaces)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_no_feature_changes_the_structure_of_the_vw_line(msgs: list[common_pb2.Namespace]) -> None:
    """Escaping: a caller's names and values stay data, whatever characters they hold."""
    try:
        ns = convert.namespaces(msgs, "context", LIMITS.max_features)
    except InvalidArgument:
        return
    line = shared_line(ns)
    assert line.startswith("shared |") and "\n" not in line and "\r" not in line
    # VW's own parser finds one feature per feature sent, whatever characters they hold. It drops
    # numeric features that it reads as 0: its text parser underflows below about 1e-21 (measured:
    # 1.2345678901234567e-22 is read as 0, 1.2345678901234567e-21 is not).
    example = _PARSER.parse_line("1 " + line.removeprefix("shared "))
    values = [v for _, feats in ns for _, v in feats]
    kept = sum(1 for v in values if isinstance(v, str) or abs(v) >= 1e-20)
    tiny = sum(1 for v in values if not isinstance(v, str) and 0 < abs(v) < 1e-20)
    assert kept <= sum(len(example[i]) for i in example.feat_group_indices) <= kept + tiny


rewards = st.builds(
    feedback_pb2.RewardEvent, event_id=st.one_of(short, text), reward_id=st.one_of(short, text), value=numbers,
    engaged_item_ids=st.lists(st.one_of(short, text), max_size=4),
)


@given(rewards, st.one_of(st.none(), numbers))
@settings(max_examples=300)
def test_rewards_are_valid_or_say_which_field_is_not(event: feedback_pb2.RewardEvent, oracle: float | None) -> None:
    if oracle is not None:
        event.oracle_best_value = oracle
    r = convert.reward_input(event)
    problem = validate_reward(r)
    if problem:
        assert problem.split(":")[0].split("[")[0] in {
            "event_id", "reward_id", "value", "engaged_item_ids", "oracle_best_value", "oracle_chosen_value"}
        return
    assert 0 < len(r.event_id) <= 64 and "\x00" not in r.event_id and len(r.reward_id) <= 128
    assert math.isfinite(r.value) and (r.oracle_best is None or math.isfinite(r.oracle_best))


specs = st.builds(
    admin_pb2.PolicySpec,
    name=st.one_of(st.sampled_from(["p", "p-1", "a.b"]), short),
    kind=st.integers(0, 3), exploration=st.integers(0, 7), aggregation=st.integers(0, 4),
    epsilon=st.floats(-1, 2), softmax_lambda=numbers, ensemble_size=st.integers(0, 100),
    squarecb_gamma_scale=numbers, interactions=st.lists(st.sampled_from(["uA", "x", "uAb", "a b", "UA"]), max_size=3),
    actions=st.lists(st.builds(common_pb2.Action, id=st.one_of(short, st.just(""))), max_size=10),
    join_window_seconds=numbers, default_reward=numbers, slots=st.integers(0, 70), description=short,
    bits=st.integers(0, 40), learning_rate=numbers,
)


@given(specs)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_policy_specs_make_a_working_model_or_name_the_field(msg: admin_pb2.PolicySpec) -> None:
    try:
        spec = convert.spec_from_proto(msg, LIMITS)
    except InvalidArgument as exc:
        assert exc.field.startswith("spec")
        return
    model = PolicyModel.create(spec)  # VW takes the arguments
    if spec.actions:
        actions = [f"|A id={a.id}" for a in spec.actions][: max(spec.slots, 1) + 1]
        if len(actions) >= spec.slots:
            probs = model.predict_one("shared |u x", actions, spec.slots if spec.kind == "ccb" else 1)
            assert all(math.isclose(sum(p), 1.0, abs_tol=1e-3) for p in probs)
    again = convert.spec_from_proto(convert.spec_to_proto(spec), LIMITS)
    assert again == spec


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_any_bytes_decode_to_a_request_or_an_undecodable(data: bytes) -> None:
    for cls in (decisions_pb2.DecideRequest, feedback_pb2.RewardBatch, admin_pb2.CreatePolicyRequest):
        out = decoder(cls)(data)
        assert isinstance(out, cls | Undecodable)
