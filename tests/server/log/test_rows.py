"""Every row tuple lists its table's columns, in order (the writer relies on it)."""

from __future__ import annotations

import json

import pytest

from ltrr_server.log import schema
from ltrr_server.log.rows import ROW_TYPES, DecisionRecord, DecisionRow, decision_row


@pytest.mark.parametrize("table", sorted(ROW_TYPES))
def test_row_fields_match_the_table(table: str) -> None:
    columns = [c.name for c in schema.metadata.tables[table].columns
               if not (c.primary_key and c.autoincrement is True)]
    assert list(ROW_TYPES[table]._fields) == columns  # type: ignore[attr-defined]


def test_a_decision_record_becomes_its_row_field_for_field() -> None:
    assert DecisionRecord._fields == DecisionRow._fields
    context = [("user", [("segment", 'a "quoted" one'), ("age", 31.0)]), ("time", [])]
    record = DecisionRecord("e", "p", 2, 1.5, 31.5, context, '[["x",[]]]', [[0.1, 0.9], [1.0]], [1, 0],
                            False, 7, True)
    row = decision_row(tuple(record))  # as the writer process receives it: a plain tuple
    assert json.loads(row.context) == [["user", [["segment", 'a "quoted" one'], ["age", 31.0]]], ["time", []]]
    assert json.loads(row.probabilities) == [[0.1, 0.9], [1.0]]
    assert json.loads(row.chosen) == [1, 0]
    untouched = ("event_id", "policy", "lineage", "created_at", "deadline", "actions", "explored",
                 "model_version", "learn")
    assert [getattr(row, f) for f in untouched] == [getattr(record, f) for f in untouched]
