"""Catalog lines: every bad line is reported with its line number and field; good lines pass."""

from __future__ import annotations

import json

import pytest

from ltrr_server.catalog.items import parse_lines

GOOD = {"id": "song-1", "type": "song", "title": "Blue Train", "artist": "John Coltrane", "popularity": 12.5,
        "created_at": 1700000000, "embedding": [0.1, 0.2]}


@pytest.mark.parametrize(("line", "field", "message"), [
    ('{"title": "no id"}', "id", "missing"),
    ('{"id": ""}', "id", "missing or empty"),
    ('{"id": "  "}', "id", "missing or empty"),
    ('{"id": 7}', "id", "missing"),
    ('{"id": "' + "x" * 300 + '"}', "id", "longer than 256"),
    ('{"id": "a", "popularity": "high"}', "popularity", "finite number"),
    ('{"id": "a", "popularity": -1}', "popularity", "negative"),
    ('{"id": "a", "popularity": NaN}', "popularity", "finite number"),
    ('{"id": "a", "created_at": Infinity}', "created_at", "finite number"),
    ('{"id": "a", "embedding": [1.0, NaN]}', "embedding[1]", "finite"),
    ('{"id": "a", "embedding": "0.1,0.2"}', "embedding", "list of numbers"),
    ('{"id": "a", "embedding": []}', "embedding", "list of numbers"),
    ('{"id": "a", "title": 5}', "title", "must be a string"),
    ('{"id": "a", "type": 5}', "type", "must be a string"),
    ('["id", "a"]', "", "not a JSON object"),
    ('{"id": "a"', "", "not valid JSON"),
])
def test_bad_line_is_reported_with_line_and_field(line: str, field: str, message: str) -> None:
    items, errors = parse_lines([json.dumps(GOOD), line, json.dumps(GOOD | {"id": "song-2"})])
    assert [i.id for i in items] == ["song-1", "song-2"]  # the bad line does not stop the others
    assert len(errors) == 1
    assert (errors[0].line, errors[0].field) == (2, field)
    assert message in errors[0].message


def test_duplicate_id_names_the_first_line() -> None:
    items, errors = parse_lines([json.dumps(GOOD), "", json.dumps(GOOD | {"title": "again"})])
    assert [i.fields["title"] for i in items] == ["Blue Train"]
    assert str(errors[0]) == "line 3: id: duplicate id 'song-1' (first on line 1)"


def test_fields_and_embedding_are_kept() -> None:
    items, errors = parse_lines([json.dumps(GOOD | {"label": "Blue Note"})])
    assert not errors
    item = items[0]
    assert item.fields == {"title": "Blue Train", "artist": "John Coltrane", "label": "Blue Note"}
    assert item.vector().tolist() == pytest.approx([0.1, 0.2]) and item.embedding_dims == 2
    assert item.popularity == 12.5 and item.type == "song"
