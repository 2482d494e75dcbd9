"""Query and name normalization."""

from __future__ import annotations

import json
import sys
import unicodedata

import pytest

from ltrr_server.catalog.catalog import Catalog, normalize
from ltrr_server.catalog.items import Item, parse_lines
from ltrr_server.log import db


def by_character(text: str) -> str:
    """The definition: NFKC, lower case, every character that is not a letter or digit a space."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


@pytest.mark.parametrize(("text", "expected"), [
    ("  Blue   Train (Remastered)! ", "blue train remastered"),
    ("AC/DC", "ac dc"),
    ("snake_case_title", "snake case title"),
    ("Ｆｕｌｌ　ｗｉｄｔｈ ２", "full width 2"),
    ("Beyoncé – Lemonade", "beyoncé lemonade"),
    ("½ Moon", "1 2 moon"),
    ("!!!", ""),
    ("", ""),
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected == by_character(text)


def test_every_code_point_is_kept_or_dropped_as_the_definition_says() -> None:
    # One text holding every code point between letters: the filter is per character, so this
    # covers it whole (NFKC and lower case are the same calls in both).
    text = "x".join(chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF)
    assert normalize(text) == by_character(text)


def _items() -> list[Item]:
    lines = [json.dumps({"id": f"song-{i}", "type": "song", "title": f"Song {i}", "artist": "Miles Davis",
                         "genre": "jazz", "popularity": float(i), "embedding": [float(i), 1.0]}) for i in range(3)]
    items, errors = parse_lines(lines)
    assert not errors
    return items


def _shared(items: list[Item]) -> None:
    """Equal keys and values are one object across items: a catalog keeps one copy of each."""
    a, b = items[0], items[2]
    assert a.fields == {"title": "Song 0", "artist": "Miles Davis", "genre": "jazz"}
    assert a.type is b.type
    for key in ("artist", "genre"):
        assert a.fields[key] is b.fields[key]
    assert [k for k in a.fields] == [k for k in b.fields] and all(
        x is y for x, y in zip(a.fields, b.fields, strict=True))


def test_parsed_items_share_equal_strings() -> None:
    _shared(_items())


def test_a_loaded_catalog_is_the_saved_one_and_shares_equal_strings(db_url: str) -> None:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    saved = Catalog()
    saved.apply(_items())
    saved.save(engine, range(len(saved)))
    loaded = Catalog.load(engine)
    assert loaded.items == saved.items and loaded.index == saved.index
    assert loaded.items[1].vector().tolist() == [1.0, 1.0]
    assert loaded.names == saved.names and loaded.popularity.tolist() == [0.0, 1.0, 2.0]
    _shared(loaded.items)
