"""The catalog: normalization, and its columns in memory against its items in SQL."""

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


def _catalog(db_url: str) -> Catalog:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    return Catalog(engine)


def _columns(cat: Catalog) -> tuple[object, ...]:
    return (cat.ids, cat.index, cat.names, cat.popularity.tolist(), cat.created_at.tolist(), cat.embedding_dim)


def test_a_loaded_catalog_is_the_saved_one_and_shares_equal_strings(db_url: str) -> None:
    saved = _catalog(db_url)
    changes = saved.apply(_items())
    assert changes.added == [0, 1, 2] and not changes.updated
    loaded = Catalog.load(saved._engine())
    assert _columns(loaded) == _columns(saved)
    assert len(loaded.names) == 4 and loaded.names.get("miles davis") == "artist"
    assert [loaded.names.get(f"song {k}") for k in range(3)] == ["song"] * 3 and loaded.names.get("jazz") is None
    assert loaded.popularity.tolist() == [0.0, 1.0, 2.0] and loaded.embedding_dim == 2
    items = loaded.read([2, 0, 1])
    assert items == [_items()[2], _items()[0], _items()[1]]
    assert items[1].vector().tolist() == [0.0, 1.0]
    _shared(loaded.read([0, 1, 2]))


def _song(n: int, title: str, popularity: float = 0.0, artist: str = "Miles Davis") -> Item:
    return Item(f"song-{n}", "song", {"title": title, "artist": artist}, popularity)


def test_an_ingest_stores_only_what_changed_and_keeps_positions(db_url: str) -> None:
    cat = _catalog(db_url)
    cat.apply([_song(k, f"Song {k}") for k in range(4)])
    changes = cat.apply([
        _song(1, "Song 1"),                  # unchanged
        _song(2, "Song 2", popularity=9.0),  # changed, same names
        _song(4, "Song 4"),                  # new
        _song(4, "Song 4", popularity=1.0),  # new, then changed again in the same ingest
    ])
    assert (changes.added, changes.updated, changes.unchanged) == ([4], [2], 1)
    assert cat.ids == [f"song-{k}" for k in range(5)] and cat.index["song-4"] == 4
    assert cat.popularity.tolist() == [0.0, 0.0, 9.0, 0.0, 1.0]
    assert cat.read([4, 2]) == [_song(4, "Song 4", popularity=1.0), _song(2, "Song 2", popularity=9.0)]
    assert _columns(Catalog.load(cat._engine())) == _columns(cat)


def test_a_renamed_item_is_no_longer_an_entity_hint(db_url: str) -> None:
    cat = _catalog(db_url)
    cat.apply([_song(0, "Blue Train", artist="John Coltrane"), _song(1, "So What")])
    assert cat.names.get("blue train") == "song" and cat.names.get("john coltrane") == "artist"
    cat.apply([_song(0, "Giant Steps", artist="John Coltrane")])
    assert cat.names.get("blue train") is None and cat.names.get("giant steps") == "song"
    assert cat.names == Catalog.load(cat._engine()).names


def test_reading_many_positions_goes_by_chunks_in_the_order_asked(db_url: str) -> None:
    cat = _catalog(db_url)
    cat.apply([_song(k, f"Song {k}", popularity=float(k)) for k in range(23)])
    order = [22, 3, 4, 5, 0, 21, 7, 7]
    assert [i.id for i in cat.iter_items(order, chunk=3)] == [f"song-{k}" for k in order]
    assert [i.popularity for i in cat.iter_items(range(23), chunk=5)] == [float(k) for k in range(23)]


def test_a_catalog_without_an_engine_is_empty_and_takes_no_items() -> None:
    cat = Catalog()
    assert len(cat) == 0 and len(cat.names) == 0 and cat.read([]) == []
    with pytest.raises(RuntimeError, match="no SQL engine"):
        cat.apply([_song(0, "x")])
