"""The hand-written DecideResponse bytes against the same response built as messages."""

from __future__ import annotations

import math

import pytest

from ltrr_server.api import convert
from ltrr_server.api.decision_wire import DecisionWire
from ltrr_server.core.decisions import Decision, SlotResult

IDS = ["news", "é" * 70, "x" * 200, "日本語", "a" * 16_500, "sports fan|1:2"]


def decision(ids: list[str], probs: list[float], chosen: int, version: int, event_id: str = "e" * 32) -> Decision:
    return Decision(event_id, ids, [SlotResult(chosen, probs[chosen], probs)], version)


@pytest.mark.parametrize("version", [0, 1, 127, 128, 2**32 - 1, 2**64 - 1])
@pytest.mark.parametrize("request_id", ["", "r-1", "ü" * 300])
@pytest.mark.parametrize("ids,probs,chosen", [
    (["news"], [1.0], 0),
    (["news", "sports", "music", "movies"], [0.0125, 0.0125, 0.9625, 0.0125], 2),
    (IDS, [0.0, 1e-300, 0.5, 0.25, 0.25 - 1e-17, math.nextafter(0.0, 1.0)], 2),
    ([f"a{i}" for i in range(300)], [1 / 300] * 300, 299),
])
def test_bytes_match_the_response_built_as_messages(
    version: int, request_id: str, ids: list[str], probs: list[float], chosen: int
) -> None:
    d = decision(ids, probs, chosen, version)
    assert DecisionWire().response(d, request_id) == convert.decision_to_proto(d, request_id)


def test_every_distinct_event_id_length_and_a_reused_encoder_stay_exact() -> None:
    wire = DecisionWire(max_heads=3)  # fewer heads kept than ids answered: dropped and made again
    for n in (1, 127, 128, 16_384):
        for ids in (["a", "b"], ["c", "d", "e", "f"], ["a", "f"]):
            d = decision(ids, [1 / len(ids)] * len(ids), len(ids) - 1, n, event_id="x" * n)
            assert wire.response(d, "req") == convert.decision_to_proto(d, "req")
    assert len(wire._heads) <= 4


def test_a_multi_slot_decision_is_not_written_as_bytes() -> None:
    d = Decision("e", ["a", "b"], [SlotResult(0, 0.5, [0.5, 0.5]), SlotResult(1, 1.0, [0.0, 1.0])], 1)
    with pytest.raises(ValueError):
        DecisionWire().response(d)
