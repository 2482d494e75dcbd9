"""Demo session logs: sessions of related queries over the music world, as users type them.

A session starts from one of the world's queries (popular ones often, since the world's query
mix is Zipfian); later queries reformulate the previous one: a refinement ("... live",
"... remix", "... playlist"), a mood or genre change, or a fixed typo.

>>> from ltrr_server.demo.music import MusicWorld
>>> sessions = demo_sessions(MusicWorld(n_items=2000, seed=42), 50, seed=1)
>>> len(sessions), all(1 <= len(s) <= 4 for s in sessions)
(50, True)
"""

from __future__ import annotations

import random

from ltrr_server.catalog.catalog import normalize
from ltrr_server.demo.music import GENRES, MOODS, MusicWorld, _typo

_REFINEMENTS = ("live", "remix", "playlist", "acoustic", "lyrics", "album", "radio", "cover")


def demo_sessions(world: MusicWorld, n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = world.query(rng)
        session = [normalize(q.text)]
        for _ in range(rng.choices((0, 1, 2, 3), (0.3, 0.4, 0.2, 0.1))[0]):
            prev = session[-1]
            kind = rng.random()
            if kind < 0.4:
                nxt = f"{prev} {rng.choice(_REFINEMENTS)}"
            elif kind < 0.7 and q.genre:
                nxt = f"{rng.choice(MOODS[rng.choice(list(MOODS))])} {q.genre} {rng.choice(('songs', 'music', 'mix'))}"
            elif kind < 0.85:
                nxt = f"{rng.choice(GENRES)} {rng.choice(('hits', 'classics', 'new releases'))}"
            else:
                nxt = normalize(world.query(rng).text)
            session.append(normalize(nxt))
        out.append(session)
    return out


def tail_sessions(world: MusicWorld, n_queries: int, seed: int = 0, exclude: frozenset[str] = frozenset()
                  ) -> list[list[str]]:
    """Two-query sessions whose second queries are ``n_queries`` distinct long-tail queries.

    They name catalog items the way people search for the rare ones: the title, the title and its
    artist, the title with a refinement, or the title with a typo; each follows the artist or the
    title. This is how the benchmarks reach a label space of a million past queries, far more than
    the Zipfian demo sessions repeat. Queries in ``exclude`` are not counted (nor produced).

    >>> sessions = tail_sessions(MusicWorld(n_items=2000, seed=42), 500, seed=1)
    >>> len(sessions), len({s[1] for s in sessions}), all(len(s) == 2 for s in sessions)
    (500, 500, True)
    """
    rng = random.Random(seed)
    items = [it for it in world.items if it["title"]]
    rng.shuffle(items)
    seen = set(exclude)
    out: list[list[str]] = []
    # Round r takes every item's r-th form, so the forms spread over the whole catalog.
    for form in range(4 + len(_REFINEMENTS)):
        for it in items:
            title, artist = it["title"], it["artist"] or it["genre"]
            if form == 0:
                prev, q = artist, title
            elif form == 1:
                prev, q = title, f"{title} {artist}"
            elif form == 2:
                prev, q = artist, _typo(rng, title)
            elif form == 3:
                prev, q = title, _typo(rng, f"{title} {artist}")
            else:
                prev, q = title, f"{title} {_REFINEMENTS[(form + len(out)) % len(_REFINEMENTS)]}"
            q = normalize(q)
            if q in seen:
                continue
            seen.add(q)
            out.append([normalize(prev), q])
            if len(out) == n_queries:
                return out
    return out
