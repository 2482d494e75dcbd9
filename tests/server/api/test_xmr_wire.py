"""The hand-written XmrPredictResponse bytes against the same response built as messages."""

from __future__ import annotations

import gc

import pytest

from ltrr.v1 import models_pb2
from ltrr_server.api.xmr_wire import XmrResponseWire
from ltrr_server.xmr.model import Ranked


class Model:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels


def ranked_of(rows: list[list[tuple[float, int]]]) -> Ranked:
    bounds = [0]
    for row in rows:
        bounds.append(bounds[-1] + len(row))
    return Ranked([j for row in rows for _, j in row], [s for row in rows for s, _ in row], bounds)


def built(version: int, labels: list[str], ranked: list[list[tuple[float, int]]]) -> models_pb2.XmrPredictResponse:
    resp = models_pb2.XmrPredictResponse(model_version=version)
    for row in ranked:
        pred = resp.predictions.add()
        for score, j in row:
            pred.labels.add(id=labels[j], score=score)
    return resp


LABELS = ["sku-1", "", "é" * 70, "x" * 200, "日本語", "a" * 16_500]


@pytest.mark.parametrize("version", [0, 1, 127, 128, 300, 2**32 - 1])
@pytest.mark.parametrize("ranked", [
    [],
    [[]],
    [[(0.9, 0), (0.5, 3)], [], [(0.0, 1)]],
    [[(-1.5, 2), (float("inf"), 4), (1e-300, 5)]],
    [[(0.1, j) for j in range(len(LABELS))]] * 3,
], ids=["no queries", "one empty", "mixed", "odd scores and long ids", "every label"])
def test_the_bytes_are_the_message_field_for_field(version: int, ranked: list[list[tuple[float, int]]]) -> None:
    wire = XmrResponseWire()
    model = Model(LABELS)
    got = wire.response(version, model, ranked_of(ranked))
    assert got == built(version, LABELS, ranked)
    # A second answer reuses the kept labels and still says the same.
    assert wire.response(version, model, ranked_of(ranked)) == got
    assert [[(x.id, x.score) for x in p.labels] for p in got.predictions] == [
        [(LABELS[j], s) for s, j in row] for row in ranked]


def test_each_model_has_its_own_labels_and_they_go_with_it() -> None:
    wire = XmrResponseWire()
    old, new = Model(["a", "b"]), Model(["b", "a"])
    assert [x.id for x in wire.response(1, old, ranked_of([[(1.0, 0)]])).predictions[0].labels] == ["a"]
    assert [x.id for x in wire.response(2, new, ranked_of([[(1.0, 0)]])).predictions[0].labels] == ["b"]
    del old
    gc.collect()
    assert len(wire._heads) == 1  # the replaced model's labels are not kept alive
