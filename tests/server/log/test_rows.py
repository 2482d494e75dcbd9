"""Every row tuple lists its table's columns, in order (the writer relies on it)."""

from __future__ import annotations

import pytest

from ltrr_server.log import schema
from ltrr_server.log.rows import ROW_TYPES


@pytest.mark.parametrize("table", sorted(ROW_TYPES))
def test_row_fields_match_the_table(table: str) -> None:
    columns = [c.name for c in schema.metadata.tables[table].columns
               if not (c.primary_key and c.autoincrement is True)]
    assert list(ROW_TYPES[table]._fields) == columns  # type: ignore[attr-defined]
