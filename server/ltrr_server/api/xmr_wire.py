"""XmrPredictResponse written as protobuf wire bytes, each label's bytes kept per model.

A batch of 256 queries at top 10 answers 2,560 labels. Building them as messages costs a
Python call per label (``labels.add(id=..., score=...)``); writing the wire format costs a
join of bytes: every label's ``ScoredLabel`` head (field tag, length, id) is encoded once per
model and kept, and only the score's 8 bytes are new per answer. protobuf then parses the
whole response in C. The result is the same message, field for field.

>>> from ltrr_server.xmr.model import Ranked
>>> class Model:  # anything with ``labels``, the item id of each label position
...     labels = ["sku-1", "sku-2", "sku-3"]
>>> wire = XmrResponseWire()
>>> resp = wire.response(7, Model(), Ranked(positions=[2, 0], scores=[0.9, 0.5], bounds=[0, 2, 2]))
>>> resp.model_version, [[(x.id, x.score) for x in p.labels] for p in resp.predictions]
(7, [[('sku-3', 0.9), ('sku-1', 0.5)], []])
"""

from __future__ import annotations

import weakref
from typing import Protocol

from ltrr.v1 import models_pb2
from ltrr_server.api.wire import length_delimited, pack_double, varint
from ltrr_server.xmr.model import Ranked


class LabelledModel(Protocol):
    labels: list[str]


def _label_head(label: str) -> bytes:
    """``XmrPrediction.labels`` entry up to the score's value: tag and length of the ScoredLabel,
    its ``id`` field, and the tag of its ``score`` field (a double: 8 bytes follow)."""
    body = length_delimited(b"\x0a", label)  # id = 1
    return b"\x0a" + varint(len(body) + 9) + body + b"\x11"  # labels = 1; score = 2, fixed64


class XmrResponseWire:
    """Encodes XmrPredict answers; keeps the encoded labels of each live model while it lives."""

    def __init__(self) -> None:
        # Filled on first use of each label, so a model with a million labels costs memory only
        # for the labels it answers with; dropped with the model (a promotion replaces it).
        self._heads: weakref.WeakKeyDictionary[LabelledModel, list[bytes | None]] = weakref.WeakKeyDictionary()

    def response(self, version: int, model: LabelledModel, ranked: Ranked) -> models_pb2.XmrPredictResponse:
        """The response for a model's ranked predictions, one per query."""
        heads = self._heads.get(model)
        if heads is None:
            heads = self._heads[model] = [None] * len(model.labels)
        labels, positions, scores, bounds = model.labels, ranked.positions, ranked.scores, ranked.bounds
        parts = [b"\x08" + varint(version)] if version else []
        for a, b in zip(bounds, bounds[1:], strict=False):
            chunks = []
            for j, score in zip(positions[a:b], scores[a:b], strict=True):
                head = heads[j]
                if head is None:
                    head = heads[j] = _label_head(labels[j])
                chunks.append(head)
                chunks.append(pack_double(score))
            body = b"".join(chunks)
            parts.append(b"\x12" + varint(len(body)))  # predictions = 2
            parts.append(body)
        return models_pb2.XmrPredictResponse.FromString(b"".join(parts))
