"""Features become VW text that no caller byte can break."""

from __future__ import annotations

import math

import pytest

from ltrr_server.config import PolicySpec
from ltrr_server.errors import InvalidArgument
from ltrr_server.features import action_line, shared_line, validate_namespaces
from ltrr_server.policy.model import PolicyModel


def test_special_characters_stay_data() -> None:
    ns = [("us er|x", [("a:b c", "v|al ue:1"), ("n=1", 2.5)])]
    line = shared_line(ns)
    assert line == "shared |us_er_x a_b_c=v_al_ue_1 n_1:2.5"
    # VW reads it as one shared example with its features, not as extra namespaces or labels.
    m = PolicyModel.create(PolicySpec(name="p"))
    [probs] = m.predict_one(line, [action_line("x|y z", ns), action_line("w", [])])
    assert len(probs) == 2


@pytest.mark.parametrize("pairs,field", [
    ([("", [("a", "x", None)])], "ctx[0].name"),
    ([("u", [("", "x", None)])], "ctx[0].features[0].name"),
    ([("u", [("a", None, math.nan)])], "ctx[0].features[0].num"),
    ([("u", [("a", None, 1.0), ("b", None, -math.inf)])], "ctx[0].features[1].num"),
    ([("u", [("a", None, None)])], "ctx[0].features[0].value"),
    ([("u", [("a", "x" * 300, None)])], "ctx[0].features[0].str"),
    ([("u", [(f"f{i}", None, 1.0) for i in range(5)])], "ctx"),
])
def test_invalid_features_name_the_field(pairs: list, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidArgument) as err:
        validate_namespaces(pairs, "ctx", max_features=4)
    assert err.value.field == field
