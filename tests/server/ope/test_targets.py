"""Table targets keyed by a context feature, on logged events as the log stores them."""

from __future__ import annotations

import json

import pytest

from ltrr_server.log.events import LoggedEvent
from ltrr_server.ope.targets import TableTarget


def event(**features: str | float) -> LoggedEvent:
    """A decision over actions x, y, z with context namespace n holding ``features``."""
    return LoggedEvent(dict(seq=1, created_at=0.0, reward=1.0, context=json.dumps([["n", list(features.items())]]),
                            actions='[["x", []], ["y", []], ["z", []]]', chosen="[0]",
                            probabilities="[[0.4, 0.3, 0.3]]"))


@pytest.mark.parametrize("key,value,first", [
    ("2", 2.0, [0.0, 1.0, 0.0]),  # found from outside: a hand-written "2" never matched a logged 2.0
    ("2.0", 2.0, [0.0, 1.0, 0.0]),
    ("1e3", 1000.0, [0.0, 1.0, 0.0]),
    ("-0.5", -0.5, [0.0, 1.0, 0.0]),
    ("007", "007", [0.0, 1.0, 0.0]),  # a string value is matched as written
    ("007", "7", [1.0, 0.0, 0.0]),
], ids=["integer key", "as logged", "exponent", "negative", "string", "string not a number"])
def test_a_number_key_names_the_number(key: str, value: str | float, first: list[float]) -> None:
    table = TableTarget({"x": 1.0}, ("n", "v"), {key: {"y": 1.0}})
    assert table.probabilities(event(v=value)) == [first]


def test_a_key_written_as_the_log_writes_it_wins() -> None:
    table = TableTarget({}, ("n", "v"), {"2": {"x": 1.0}, "2.0": {"z": 1.0}})
    assert table.probabilities(event(v=2.0)) == [[0.0, 0.0, 1.0]]


def test_a_table_whose_values_no_event_had_says_so() -> None:
    table = TableTarget({}, ("n", "age"), {"young": {"y": 1.0}, "old": {"z": 1.0}})
    for age in (1.0, 2.0):
        table.probabilities(event(age=age))
    assert table.unmatched(2) == ("no event's n.age was one of its values ('old', 'young'; the events had '1.0', "
                                  "'2.0', ...), and its default gives weight to no action they offered: its estimate "
                                  "would be uniform's")
