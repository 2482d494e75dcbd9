"""Query and name normalization."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from ltrr_server.catalog.catalog import normalize


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
