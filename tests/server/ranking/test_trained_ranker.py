"""LambdaMART rankers from the logged Search pages of a real server: training, the gate, serving."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ltrr.v1 import models_pb2, models_pb2_grpc, search_pb2_grpc
from ltrr_client.client import LtrrClient, search_request
from ltrr_server.demo.music import MusicWorld
from ltrr_server.errors import FailedPrecondition
from ltrr_server.log import db
from ltrr_server.ranking.lambdamart import LambdaMartParams, LambdaMartRanker, train_ranker
from ltrr_server.ranking.pagelog import held_out, read_pages
from ltrr_server.simulation.search import clicks, grades
from ltrr_server.xmr.registry import ModelRegistry
from tests.conftest import TEST_ITEMS, ServerThread, retrieval_server_settings
from tests.helpers import rows, wait_for


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld(n_items=TEST_ITEMS, seed=42)


def _serve_pages(s: ServerThread, world: MusicWorld, n: int, seed: int = 3) -> None:
    """``n`` Searches, engaged with by the simulation's position-based click model."""
    rng = random.Random(seed)
    with LtrrClient(s.target) as c:
        for _ in range(n):
            q = world.query(rng)
            resp = c.search("retrieval", q.text, embedding=q.embedding or [])
            ids = [r.item_id for r in resp.results]
            engaged = [ids[k] for k in clicks(grades(world, q, ids), 1.0, rng)]
            c.report_reward(resp.event_id, 1.0, engaged=engaged)
    wait_for(lambda: len(rows(s.settings.db_url, "joined")) >= n, timeout=30, what="joins")


def _registry(s: ServerThread) -> ModelRegistry:
    engine = db.create_engine(s.settings.db_url)
    db.migrate(engine)
    return ModelRegistry(engine, s.settings.model_dir)


def test_pages_are_read_back_with_their_engagements_and_a_stable_split(make_server: Any, sqlite_url: str,
                                                                       tmp_path: Path, world: MusicWorld) -> None:
    s = make_server(retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models")))
    _serve_pages(s, world, 200)
    engine = db.create_engine(sqlite_url)
    train, heldout = read_pages(engine, "retrieval", split="train"), read_pages(engine, "retrieval", split="heldout")
    everything = read_pages(engine, "retrieval", split="all")
    assert len(train.groups) + len(heldout.groups) == len(everything.groups) > 150  # pages with results
    assert all(held_out(e) for e in heldout.event_ids) and not any(held_out(e) for e in train.event_ids)
    assert sum(everything.groups) == len(everything.labels) == len(everything.rows) == len(everything.positions)
    engaged = {r["event_id"] for r in rows(sqlite_url, "rewards") if r["engaged"] not in (None, "[]")}
    labelled, start = set(), 0
    for event_id, size in zip(everything.event_ids, everything.groups, strict=True):
        if any(everything.labels[start:start + size]):
            labelled.add(event_id)
        assert everything.positions[start:start + size] == list(range(size))
        start += size
    assert labelled == engaged & set(everything.event_ids)
    assert "lexical_score" in everything.names and everything.matrix.shape == (len(everything.rows),
                                                                               len(everything.names))


def test_a_trained_ranker_is_gated_promoted_and_orders_pages(make_server: Any, sqlite_url: str, tmp_path: Path,
                                                             world: MusicWorld) -> None:
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models"))
    s = make_server(settings)
    _serve_pages(s, world, 600)
    reg = _registry(s)
    v1, meta = train_ranker(reg, "lm", "retrieval", LambdaMartParams(trees=30, min_data_in_leaf=20))
    assert v1 == 1 and meta["heldout_pages"] > 20 and 0 < meta["top1_engaged_new"] <= 1
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    ss = search_pb2_grpc.SearchServiceStub(s.channel())
    # Not live yet: ordering by it names the model, and nothing is logged.
    logged = len(rows(s.settings.db_url, "decisions"))
    with pytest.raises(grpc.RpcError) as err:
        ss.Search(search_request("retrieval", "mellow jazz songs", order="model", model="lm"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "lm" in (err.value.details() or "")
    assert len(rows(s.settings.db_url, "decisions")) == logged
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=1))
    page = ss.Search(search_request("retrieval", "mellow jazz songs", order="model", model="lm"))
    assert page.ranker == "model:lm" and page.ranker_version == 1 and page.page_probability == 1.0
    scores = [r.score for r in page.results]
    assert scores == sorted(scores, reverse=True)
    # A second version is measured against the live one on held-out pages none of them trained on.
    v2, _ = train_ranker(reg, "lm", "retrieval", LambdaMartParams(trees=30, min_data_in_leaf=20, seed=2))
    promoted = ms.PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=v2))
    assert promoted.previous_version == 1 and promoted.model.live
    assert 0 <= promoted.negative_flip_rate <= 0.5


def test_a_ranker_without_held_out_engagements_is_promoted_only_when_forced(
        make_server: Any, sqlite_url: str, tmp_path: Path, world: MusicWorld) -> None:
    s = make_server(retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models")))
    _serve_pages(s, world, 300)
    reg = _registry(s)
    params = LambdaMartParams(trees=10, min_data_in_leaf=20)
    train_ranker(reg, "lm", "retrieval", params)
    v2, _ = train_ranker(reg, "lm", "retrieval", params)
    (Path(reg.get("lm", v2)["path"]) / "heldout.npz").unlink()
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=1))
    with pytest.raises(grpc.RpcError) as err:
        ms.PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=v2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "held-out pages" in (err.value.details() or "")
    assert ms.PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=v2, force=True)).model.live


def test_the_configured_trained_ranker_serves_and_the_online_one_covers_until_it_is_live(
        make_server: Any, sqlite_url: str, tmp_path: Path, world: MusicWorld,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = retrieval_server_settings(sqlite_url, tmp_path / "data", model_dir=str(tmp_path / "models"))
    r = settings.retrieval
    settings = dataclasses.replace(settings, retrieval=dataclasses.replace(
        r, ranking=dataclasses.replace(r.ranking, ranker="model:lm")))
    s = make_server(settings)
    ss = search_pb2_grpc.SearchServiceStub(s.channel())
    first = ss.Search(search_request("retrieval", "happy pop songs"))
    assert first.ranker == "online" and "cannot serve" in caplog.text  # no version yet: said, and served
    _serve_pages(s, world, 300)
    train_ranker(_registry(s), "lm", "retrieval", LambdaMartParams(trees=10, min_data_in_leaf=20))
    models_pb2_grpc.ModelServiceStub(s.channel()).PromoteModel(models_pb2.PromoteModelRequest(name="lm", version=1))
    later = ss.Search(search_request("retrieval", "happy pop songs"))
    assert later.ranker == "model:lm" and later.ranker_version == 1


def test_training_without_pages_or_engagements_says_so(sqlite_url: str, tmp_path: Path) -> None:
    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    with pytest.raises(FailedPrecondition, match="no logged pages"):
        train_ranker(ModelRegistry(engine, tmp_path / "models"), "lm", "retrieval", LambdaMartParams())


def test_a_saved_ranker_scores_as_it_did_and_aligns_columns_by_name(tmp_path: Path) -> None:
    from ltrr_server.ranking.pagelog import LoggedPages

    rng = np.random.default_rng(1)
    pages = LoggedPages(names=["a", "b"])
    for p in range(200):
        for k in range(5):
            a = float(rng.random())
            pages.rows.append([a, float(rng.random())])
            pages.kinds.append("song" if k % 2 else "album")
            pages.labels.append(float(a > 0.8))
            pages.positions.append(k)
        pages.groups.append(5)
        pages.event_ids.append(f"e{p}")
    ranker = LambdaMartRanker.train(pages, LambdaMartParams(trees=20, min_data_in_leaf=5))
    ranker.save(tmp_path / "v1")
    again = LambdaMartRanker.load(tmp_path / "v1")
    x = np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    assert again.score(x, ["a", "b"], ["song", "song"]) == ranker.score(x, ["a", "b"], ["song", "song"])
    # Columns come by name: swapped columns, same scores; an unknown item type is allowed.
    assert again.score(x[:, ::-1], ["b", "a"], ["song", "song"]) == ranker.score(x, ["a", "b"], ["song", "song"])
    assert len(again.score(x, ["a", "b"], ["podcast", "song"])) == 2
    (tmp_path / "v1" / "model.txt").write_text("garbage")
    with pytest.raises(FailedPrecondition, match="cannot load"):
        LambdaMartRanker.load(tmp_path / "v1")
