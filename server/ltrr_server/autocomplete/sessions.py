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
from ltrr_server.demo.music import GENRES, MOODS, MusicWorld

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
