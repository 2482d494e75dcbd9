"""A deterministic music-search world: a catalog, and queries whose best strategy depends on them.

The same seed always gives the same catalog, so the server (which ingests it) and the
simulator (which knows its ground truth) build it independently and agree.

Query kinds, and the strategy each one favours by construction:

- ``entity``: a song, album or artist by name, sometimes with a typo: ``lexical``.
- ``mood``: a mood synonym and a genre ("mellow jazz songs"); the user engages with an item near
  their latent intent, and the frontend sends a query embedding of that intent: ``vector``.
- ``head``: a few hundred short queries repeated with a Zipf law ("road trip gym"), each meant for
  one playlist that lexical search ranks poorly: ``memory`` once it has seen engagements.
- ``new``: "new jazz releases": one of the newest items of the genre, unpopular yet: ``explore``.

>>> world = MusicWorld(n_items=2000, seed=7)
>>> len(world.items), world.items[0]["id"]
(2000, 'artist-000000')
>>> MusicWorld(n_items=2000, seed=7).items[1500] == world.items[1500]
True
>>> q = world.query(random.Random(1))
>>> q.kind in QUERY_KINDS and q.target in world.index
True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

DIM = 32
GENRES = ("pop", "rock", "jazz", "hiphop", "electronic", "classical", "country", "soul", "metal", "folk",
          "reggae", "blues", "latin", "funk", "indie", "ambient")
MOODS: dict[str, tuple[str, ...]] = {
    "chill": ("chill", "mellow", "relaxed", "laidback"),
    "happy": ("happy", "upbeat", "cheerful", "sunny"),
    "sad": ("sad", "melancholy", "blue", "heartbroken"),
    "energetic": ("energetic", "hype", "pumped", "intense"),
    "romantic": ("romantic", "love", "tender", "sensual"),
    "dark": ("dark", "moody", "brooding", "gloomy"),
    "focus": ("focus", "study", "concentration", "deepwork"),
    "party": ("party", "dance", "club", "groove"),
    "sleep": ("sleep", "calm", "peaceful", "soothing"),
    "epic": ("epic", "cinematic", "heroic", "grand"),
}
ACTIVITIES = ("workout", "roadtrip", "dinner", "coding", "running", "commute", "cooking", "gaming", "yoga",
              "reading", "cleaning", "wedding", "summer", "winter", "rainy", "morning", "latenight", "weekend")
TYPES = (("song", 0.60), ("album", 0.15), ("artist", 0.05), ("playlist", 0.10), ("podcast", 0.10))
QUERY_KINDS = ("entity", "mood", "head", "new")
QUERY_MIX = (0.35, 0.30, 0.20, 0.15)
NEW_DAYS = 14.0
_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sa", "lu", "dre", "mon", "zi", "pa", "nel", "qui", "bo",
              "rin", "ta", "shi", "gor", "el", "va", "den", "ko", "mar", "fu", "li", "ssa", "tro", "ne", "ya")
_DAY = 86400.0
# Catalog timestamps are relative to this instant, so a given seed gives the same catalog forever.
EPOCH = 1_790_000_000.0


def _unit(v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)
    return out


@dataclass(frozen=True)
class WorldQuery:
    kind: str
    text: str
    # The item the user will engage with, if it is among the candidates.
    target: str
    # What the frontend's own encoder would send (None: let the server encode the text).
    embedding: list[float] | None
    genre: str = ""


class MusicWorld:
    """Catalog items (as ingest takes them) and a query generator with a known engagement target."""

    def __init__(self, n_items: int = 100_000, seed: int = 42, n_head_queries: int = 300) -> None:
        self.seed = seed
        rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        self._genre_vec = {g: _unit(nrng.standard_normal(DIM)) for g in GENRES}
        self._mood_vec = {m: _unit(nrng.standard_normal(DIM)) for m in MOODS}
        self.vocab = self._words(rng, 4000)
        n_artists = max(10, n_items // 20)
        artists = [self._name(rng, 2) for _ in range(n_artists)]
        artist_genre = [rng.choice(GENRES) for _ in range(n_artists)]
        artist_pop = [1.0 / (i + 1) ** 0.8 for i in range(n_artists)]
        self.items: list[dict[str, Any]] = []
        self.embeddings = np.zeros((n_items, DIM), dtype=np.float32)
        type_names = [t for t, _ in TYPES if t != "artist"]
        type_weights = [w for t, w in TYPES if t != "artist"]
        # Unit-length noise: a noise weight means the same thing whatever DIM is.
        noise = _unit(nrng.standard_normal((n_items, DIM)))
        for i in range(n_items):
            if i < n_artists:
                kind, a = "artist", i
            else:
                kind = rng.choices(type_names, type_weights)[0]
                # Half the items go to head artists (Zipf), half anywhere.
                a = min(int(rng.paretovariate(1.0)) - 1, n_artists - 1) if rng.random() < 0.5 \
                    else rng.randrange(n_artists)
            genre = artist_genre[a] if rng.random() < 0.85 else rng.choice(GENRES)
            mood = rng.choice(list(MOODS))
            syn = rng.choice(MOODS[mood])
            age_days = NEW_DAYS * rng.random() if rng.random() < 0.01 else 30 + rng.expovariate(1 / 1500)
            popularity = artist_pop[a] * rng.lognormvariate(0, 1.0) * (0.05 if age_days < NEW_DAYS else 1.0)
            if kind == "artist":
                title, artist = artists[a], artists[a]
                text = f"{syn} {genre} artist"
            elif kind == "playlist":
                title = f"{self._name(rng, 2)} {rng.choice(ACTIVITIES)}"
                artist = ""
                text = f"{syn} {genre} playlist for {rng.choice(ACTIVITIES)}"
            elif kind == "podcast":
                title, artist = self._name(rng, rng.randint(2, 3)), self._name(rng, 2)
                text = f"{syn} podcast about {genre} music"
            else:
                title, artist = self._name(rng, rng.randint(1, 3)), artists[a]
                text = f"{syn} {genre} {kind}"
            self.items.append({
                "id": f"{kind}-{i:06d}", "type": kind, "title": title, "artist": artist, "genre": genre,
                "mood": mood, "text": text, "popularity": round(popularity * 1000, 4),
                "created_at": round(EPOCH - age_days * _DAY, 1),
            })
            self.embeddings[i] = _unit(self._genre_vec[genre] + self._mood_vec[mood] + 0.6 * noise[i])
        self.index = {item["id"]: i for i, item in enumerate(self.items)}
        self._pop = np.array([it["popularity"] for it in self.items])
        named = [i for i, it in enumerate(self.items) if it["type"] in ("song", "album", "artist")]
        self._named = named
        self._named_cum = np.cumsum(np.sqrt(self._pop[named]))
        self._cells: dict[tuple[str, str], list[int]] = {}
        for i, it in enumerate(self.items):
            self._cells.setdefault((it["genre"], it["mood"]), []).append(i)
        by_genre_new: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            if EPOCH - it["created_at"] < NEW_DAYS * _DAY:
                by_genre_new.setdefault(it["genre"], []).append(i)
        self._newest = {g: sorted(v, key=lambda i: -self.items[i]["created_at"])[:10] for g, v in by_genre_new.items()}
        playlists = [i for i, it in enumerate(self.items) if it["type"] == "playlist"] or list(range(n_items))
        self.head_queries: list[tuple[str, int]] = []
        seen: set[str] = set()
        while len(self.head_queries) < n_head_queries:
            p = rng.choice(playlists)
            words = self.items[p]["title"].split()
            q = f"{rng.choice(words)} {rng.choice(ACTIVITIES)}"
            if q not in seen:
                seen.add(q)
                self.head_queries.append((q, p))
        self._head_cum = np.cumsum([1.0 / (r + 1) ** 1.1 for r in range(len(self.head_queries))])

    # ------------------------------------------------------------------ names
    @staticmethod
    def _words(rng: random.Random, n: int) -> list[str]:
        out: set[str] = set()
        while len(out) < n:
            out.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
        return sorted(out)

    def _name(self, rng: random.Random, n_words: int) -> str:
        return " ".join(rng.choice(self.vocab) for _ in range(n_words))

    # ------------------------------------------------------------------ catalog
    def catalog(self, with_embeddings: bool = True) -> Iterator[dict[str, Any]]:
        """Items as catalog lines (``ltrr ingest catalog`` takes them as JSONL)."""
        for i, item in enumerate(self.items):
            if with_embeddings:
                yield item | {"embedding": [round(float(x), 5) for x in self.embeddings[i]]}
            else:
                yield item

    # ------------------------------------------------------------------ queries
    def query(self, rng: random.Random) -> WorldQuery:
        """One query with its engagement target."""
        kind = rng.choices(QUERY_KINDS, QUERY_MIX)[0]
        nrng = np.random.default_rng(rng.getrandbits(32))

        def noise() -> np.ndarray[Any, Any]:
            return _unit(nrng.standard_normal(DIM))

        if kind == "new" and self._newest:
            genre = rng.choice(sorted(self._newest))
            newest = self._newest[genre]
            target = newest[min(int(rng.expovariate(0.4)), len(newest) - 1)]
            text = rng.choice((f"new {genre} releases", f"latest {genre}", f"new {genre} music"))
            emb = _unit(self._genre_vec[genre] + 0.8 * noise())
            return WorldQuery(kind, text, self.items[target]["id"], emb.tolist(), genre)
        if kind == "head":
            r = int(np.searchsorted(self._head_cum, rng.random() * self._head_cum[-1]))
            text, target = self.head_queries[min(r, len(self.head_queries) - 1)]
            emb = _unit(self.embeddings[target] + 1.0 * noise())
            return WorldQuery(kind, text, self.items[target]["id"], emb.tolist())
        if kind == "mood":
            genre, mood = rng.choice(GENRES), rng.choice(list(MOODS))
            cell = self._cells.get((genre, mood)) or list(range(len(self.items)))
            intent = _unit(self._genre_vec[genre] + self._mood_vec[mood] + 0.5 * noise())
            sims = self.embeddings[cell] @ intent
            top = np.argsort(-sims)[:10]
            target = cell[int(top[min(int(rng.expovariate(0.5)), len(top) - 1)])]
            text = f"{rng.choice(MOODS[mood])} {genre} {rng.choice(('songs', 'music', 'tracks', 'vibes'))}"
            emb = _unit(intent + 0.1 * noise())
            return WorldQuery(kind, text, self.items[target]["id"], emb.tolist(), genre)
        pos = int(np.searchsorted(self._named_cum, rng.random() * self._named_cum[-1]))
        target = self._named[min(pos, len(self._named) - 1)]
        item = self.items[target]
        text = item["title"] if item["type"] != "artist" or rng.random() < 0.8 else f"{item['title']} songs"
        if rng.random() < 0.2:
            text = _typo(rng, text)
        emb = _unit(self.embeddings[target] + 0.8 * noise())
        return WorldQuery("entity", text, item["id"], emb.tolist())


def _typo(rng: random.Random, text: str) -> str:
    """One typing error in the longest word: a dropped, doubled or swapped letter.

    >>> _typo(random.Random(3), "velvet harbor") != "velvet harbor"
    True
    """
    words = text.split()
    w = max(range(len(words)), key=lambda i: len(words[i]))
    s = words[w]
    if len(s) < 4:
        return text
    k = rng.randrange(1, len(s) - 1)
    op = rng.randrange(3)
    s = s[:k] + s[k + 1:] if op == 0 else s[:k] + s[k] + s[k:] if op == 1 else s[:k - 1] + s[k] + s[k - 1] + s[k + 1:]
    words[w] = s
    return " ".join(words)

