"""Query features: what the policy knows about a query before choosing a plan.

>>> from ltrr_server.catalog.catalog import Catalog
>>> f = dict(query_features(("new", "jazz", "releases"), "new jazz releases", Catalog(), 0, hour=9))
>>> sorted(f["h"])  # doctest: +NORMALIZE_WHITESPACE
[('daypart', '1'), ('entity', 'none'), ('hint', 'new'), ('hint', 'releases'), ('memory', '0'), ('script', 'latin'),
 ('tokens', '3')]
"""

from __future__ import annotations

import time

from ltrr_server.catalog.catalog import Catalog
from ltrr_server.features import FeatureValue, Namespaces

# Words that say what kind of result is wanted.
TYPE_HINTS = frozenset({
    "new", "latest", "release", "releases", "album", "albums", "playlist", "playlists", "podcast", "podcasts",
    "song", "songs", "artist", "live", "remix", "mix", "music", "tracks", "vibes", "episode", "top", "best",
})
_MAX_TOKENS = 16


def _bucket(n: int) -> str:
    return "0" if n == 0 else "1-2" if n <= 2 else "3-9" if n <= 9 else "10-99" if n <= 99 else "100+"


def query_features(
    tokens: tuple[str, ...], normalized: str, catalog: Catalog, memory_count: int, hour: int | None = None,
) -> Namespaces:
    """Namespaces ``q`` (the words) and ``h`` (hints: length, entity match, type words, memory, time)."""
    words: list[tuple[str, FeatureValue]] = [("w", t) for t in tokens[:_MAX_TOKENS]]
    n = len(tokens)
    hints: list[tuple[str, FeatureValue]] = [
        ("tokens", str(min(n, 4))),
        ("entity", catalog.names.get(normalized, "none")),
        ("memory", _bucket(memory_count)),
        ("daypart", str((time.localtime().tm_hour if hour is None else hour) // 6)),
        ("script", "latin" if normalized.isascii() else "other"),
    ]
    hints += [("hint", t) for t in tokens if t in TYPE_HINTS]
    if any(t.isdigit() for t in tokens):
        hints.append(("digits", "yes"))
    return [("q", words), ("h", hints)]
