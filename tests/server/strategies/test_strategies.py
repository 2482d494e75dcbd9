"""Each built-in strategy on a real index over the generated music catalog."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ltrr_server.catalog.catalog import Catalog, normalize
from ltrr_server.catalog.ingest import demo_items
from ltrr_server.config import RetrievalSettings, StrategySpec
from ltrr_server.demo.music import MusicWorld
from ltrr_server.errors import InvalidArgument
from ltrr_server.log import db
from ltrr_server.metrics import Metrics
from ltrr_server.retrieval.retriever import Retriever
from ltrr_server.strategies.base import Params, Query, Strategy, StrategyEnv, create

N = 2000


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld(n_items=N, seed=42)


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    d = tmp_path_factory.mktemp("strategies")
    engine = db.create_engine(f"sqlite:///{d / 'l.db'}")
    db.migrate(engine)
    settings = RetrievalSettings(data_dir=str(d / "data"), strategies=(
        StrategySpec("lexical", "lexical", (0, 10)), StrategySpec("vector", "vector", (0, 10)),
        StrategySpec("memory", "memory", (0, 10)), StrategySpec("explore", "explore", (0, 10)),
    ))
    r = Retriever(settings, engine, Metrics(CollectorRegistry()))
    r.ingest(demo_items(N, 42))
    return r


def q(text: str, embedding: list[float] | None = None, r: Retriever | None = None) -> Query:
    if r is not None:
        return r.prepare(text, embedding or [])
    n = normalize(text)
    return Query(text, n, tuple(n.split()))


def test_every_strategy_meets_the_interface(retriever: Retriever) -> None:
    assert set(retriever.strategies) == {"lexical", "vector", "memory", "explore"}
    for s in retriever.strategies.values():
        assert isinstance(s, Strategy)
        assert len(s.retrieve(q("jazz"), 0)) == 0


def test_lexical_finds_an_exact_title_first(retriever: Retriever, world: MusicWorld) -> None:
    songs = [it for it in world.items if it["type"] == "song"]
    found_first = 0
    for item in songs[:50]:
        hits = retriever.strategies["lexical"].retrieve(q(item["title"]), 10)
        ids = [retriever.catalog.ids[p] for p, _ in hits]
        assert len(hits) <= 10
        found_first += bool(ids) and item["id"] in ids[:3]
    assert found_first >= 40  # titles can repeat words; the exact item is nearly always on top


def test_lexical_popularity_prior_orders_equal_matches(tmp_path: Path, retriever: Retriever) -> None:
    env = StrategyEnv(retriever.catalog, tmp_path, retriever.engine)
    with_prior = create("lexical", "lex", Params("p", {"popularity_prior": 5.0}), env)
    with_prior.index(retriever.catalog, list(range(len(retriever.catalog))), lambda *_: None)  # type: ignore[attr-defined]
    without = create("lexical", "lex0", Params("p", {"popularity_prior": 0.0}), env)
    without.index(retriever.catalog, list(range(len(retriever.catalog))), lambda *_: None)  # type: ignore[attr-defined]
    pops = [retriever.catalog.popularity[p] for p, _ in with_prior.retrieve(q("mellow jazz"), 20)]
    plain = [retriever.catalog.popularity[p] for p, _ in without.retrieve(q("mellow jazz"), 20)]
    assert np.mean(pops) > 1.3 * np.mean(plain)


def test_vector_finds_the_nearest_items_of_a_query_embedding(retriever: Retriever, world: MusicWorld) -> None:
    rng = random.Random(3)
    hits_at_50 = 0
    moods = [world.query(rng) for _ in range(400)]
    moods = [m for m in moods if m.kind == "mood"][:40]
    for m in moods:
        query = retriever.prepare(m.text, m.embedding or [])
        ids = [retriever.catalog.ids[p] for p, _ in retriever.strategies["vector"].retrieve(query, 50)]
        hits_at_50 += m.target in ids
    assert hits_at_50 >= 0.6 * len(moods)


def test_vector_encodes_text_without_an_embedding(retriever: Retriever) -> None:
    hits = retriever.strategies["vector"].retrieve(q("mellow jazz songs"), 10)
    assert len(hits) == 10 and all(-1.0 <= s <= 1.0 for _, s in hits)


def test_vector_min_similarity_drops_weak_hits(tmp_path: Path, retriever: Retriever) -> None:
    env = StrategyEnv(retriever.catalog, tmp_path, retriever.engine)
    strict = create("vector", "vec", Params("p", {"min_similarity": 0.99}), env)
    strict.index(retriever.catalog, list(range(len(retriever.catalog))), lambda *_: None)  # type: ignore[attr-defined]
    assert len(strict.retrieve(q("mellow jazz songs"), 50)) < 5


@pytest.mark.parametrize(("embedding", "field", "message"), [
    ([0.1] * 5, "query_embedding", "expected 32 dimensions, got 5"),
    ([0.1] * 31 + [float("nan")], "query_embedding[31]", "must be finite"),
    ([0.0] * 32, "query_embedding", "all zeros"),
])
def test_bad_query_embeddings_name_the_field(retriever: Retriever, embedding: list[float], field: str,
                                             message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        retriever.prepare("jazz", embedding)
    assert err.value.field == field and message in err.value.message


def test_explore_returns_new_items_for_new_release_queries(retriever: Retriever, world: MusicWorld) -> None:
    cat = retriever.catalog
    newest = max(cat.created_at)
    texts = [item.text() for item in cat.read(range(len(cat)))]
    recent_jazz = {p for p in range(len(cat)) if "jazz" in texts[p] and newest - cat.created_at[p] < 30 * 86400}
    assert recent_jazz
    hits = retriever.strategies["explore"].retrieve(q("new jazz releases"), 10)
    assert len(hits) == 10
    assert {p for p, _ in hits[:len(recent_jazz)]} == recent_jazz  # recently added matches come first
    assert all("jazz" in texts[p] for p, _ in hits)  # the rest: long-tail matches


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("lexical", {"popularity_prior": -1}, "retrieval.strategies.s.popularity_prior"),
    ("lexical", {"field_boosts": {"colour": 2.0}}, "retrieval.strategies.s.field_boosts.colour"),
    ("lexical", {"bm25": True}, "retrieval.strategies.s.bm25"),
    ("vector", {"min_similarity": 2}, "retrieval.strategies.s.min_similarity"),
    ("explore", {"random_share": "half"}, "retrieval.strategies.s.random_share"),
    ("memory", {"smoothing": -3}, "retrieval.strategies.s.smoothing"),
    ("bm42", {}, "retrieval.strategies.s.kind"),
])
def test_bad_strategy_parameters_name_the_field(tmp_path: Path, kind: str, params: dict[str, object],
                                                field: str) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    db.migrate(engine)
    with pytest.raises(InvalidArgument) as err:
        create(kind, "s", Params("retrieval.strategies.s", params), StrategyEnv(Catalog(engine), tmp_path, engine))
    assert err.value.field == field
