"""Session-aware autocompletion: every index on the demo sessions, completions that keep the prefix,
the RPC with sessions the server keeps, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from ltrr.v1 import models_pb2, models_pb2_grpc
from ltrr_server.autocomplete.evaluate import evaluate
from ltrr_server.autocomplete.model import AutocompleteModel, AutocompleteParams, MostPopular, build_chain
from ltrr_server.autocomplete.sessions import demo_sessions
from ltrr_server.demo.music import MusicWorld
from ltrr_server.errors import InvalidArgument
from ltrr_server.log import db
from ltrr_server.xmr.registry import ModelRegistry
from tests.conftest import demo_policy, server_settings

N_ITEMS = 2000


@pytest.fixture(scope="module")
def sessions() -> tuple[list[list[str]], list[list[str]]]:
    world = MusicWorld(n_items=N_ITEMS, seed=42)
    return demo_sessions(world, 4000, seed=1), demo_sessions(world, 600, seed=2)


@pytest.fixture(scope="module")
def models(sessions: tuple[list[list[str]], list[list[str]]]) -> dict[str, AutocompleteModel]:
    return {i: AutocompleteModel.train(sessions[0], AutocompleteParams(index=i)) for i in ("kmeans", "trie", "hybrid")}


def test_completions_start_with_the_prefix_for_every_index(models: dict[str, AutocompleteModel]) -> None:
    for model in models.values():
        for prev, prefix in (("", "j"), ("jazz", "ja"), ("rock hits", "new "), ("x", "zzzzzzzzzzzzzzzzzzzzzzzz")):
            got = model.complete(prev, prefix, 10)
            assert len(got) <= 10
            assert all(q.startswith(prefix) for q, _ in got), (prefix, got)
        assert model.complete("", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 10) == []  # longer than any label
        with pytest.raises(InvalidArgument) as err:
            model.complete("", "  ", 10)
        assert err.value.field == "prefix"


def test_the_hybrid_tree_is_the_trie_above_16_way_k_means_trees(
        sessions: tuple[list[list[str]], list[list[str]]]) -> None:
    labels = sorted({q for s in sessions[0] for q in s})
    # Leaves of at most 4 labels: the largest trie nodes need several 16-way k-means levels.
    chain = build_chain(labels, AutocompleteParams(index="hybrid", trie_depth=2, cluster_size=4), x=None, y=None)
    assert len(chain) > 2 + 2 and chain[-1].shape[0] == len(labels)
    # Walk each label up the tree: its node at trie level d is its d-character prefix.
    node = chain[-1].tocsr().indices  # label -> leaf cluster
    path = [node]
    for m in reversed(chain[1:-1]):
        node = m.tocsr().indices[node]
        path.append(node)
    path.reverse()  # path[0]: trie level 1 ... path[-1]: leaf cluster
    for d in (0, 1):
        by_node: dict[int, set[str]] = {}
        for lab, n in zip(labels, path[d], strict=True):
            by_node.setdefault(int(n), set()).add(lab[:d + 1])
        assert all(len(p) == 1 for p in by_node.values())
    assert chain[-1].sum(axis=0).max() <= 4  # leaf clusters
    for m in chain[2:-1]:  # below the trie: at most 16 children per node
        assert m.sum(axis=0).max() <= 16
        assert m.sum(axis=0).min() >= 1  # no childless node


def test_the_previous_query_changes_the_completion(models: dict[str, AutocompleteModel],
                                                    sessions: tuple[list[list[str]], list[list[str]]]) -> None:
    refined = [(s[t - 1], s[t]) for s in sessions[0] for t in range(1, len(s)) if s[t].startswith(s[t - 1] + " ")]
    prev, target = refined[0]
    model = models["hybrid"]
    with_context = [q for q, _ in model.complete(prev, target[:len(prev) + 2], 10)]
    assert target in with_context


def test_every_index_beats_most_popular_after_a_previous_query(
    models: dict[str, AutocompleteModel], sessions: tuple[list[list[str]], list[list[str]]],
) -> None:
    popular = MostPopular([q for s in sessions[0] for q in s])
    methods: dict[str, Any] = {name: (lambda p, x, k, m=m: [q for q, _ in m.complete(p, x, k)])
                               for name, m in models.items()}
    methods["popular"] = lambda p, x, k: [q for q, _ in popular.complete(x, k)]
    table = evaluate(methods, sessions[1], (1, 2, 3))
    # Latency is not asserted here: a p99 inside a shared test run measures the machine (it failed
    # a CI run at 13 ms while the suite ran 20% slower). `python -m bench.bench_autocomplete`
    # measures the p99 < 10 ms goal at a million labels (docs/benchmarks.md).
    for n in (1, 2, 3):
        for name in models:
            assert table[name][n]["mrr_at_10"] > table["popular"][n]["mrr_at_10"], (name, n, table)


def test_autocomplete_rpc_with_server_kept_sessions(make_server: Any, sqlite_url: str, tmp_path: Path,
                                                    models: dict[str, AutocompleteModel]) -> None:
    engine = db.create_engine(sqlite_url)
    db.migrate(engine)
    ModelRegistry(engine, tmp_path / "models").register("ac", "autocomplete", models["hybrid"], {})
    s = make_server(server_settings(sqlite_url, demo_policy(), model_dir=str(tmp_path / "models")))
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    req = models_pb2.AutocompleteRequest(model="ac", prefix="ja")
    with pytest.raises(grpc.RpcError) as err:
        ms.Autocomplete(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # registered, not promoted
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="ac", version=1))
    plain = ms.Autocomplete(req)
    assert plain.model_version == 1 and 0 < len(plain.completions) <= 10
    assert all(c.query.startswith("ja") for c in plain.completions)

    sent = ms.Autocomplete(models_pb2.AutocompleteRequest(model="ac", prefix="ja", previous_queries=["rock hits"],
                                                           session_id="s1"))
    kept = ms.Autocomplete(models_pb2.AutocompleteRequest(model="ac", prefix="ja", session_id="s1"))
    assert [c.query for c in kept.completions] == [c.query for c in sent.completions]
    assert ms.RecordQuery(models_pb2.RecordQueryRequest(session_id="s2", query="Jazz Hits")).session_queries == 1
    assert ms.RecordQuery(models_pb2.RecordQueryRequest(session_id="s2", query="jazz")).session_queries == 2

    for bad, field in ((models_pb2.AutocompleteRequest(model="ac", prefix=""), "prefix"),
                       (models_pb2.AutocompleteRequest(model="ac", prefix="x" * 300), "prefix"),
                       (models_pb2.AutocompleteRequest(model="ac", prefix="a", k=500), "k"),
                       (models_pb2.AutocompleteRequest(model="", prefix="a"), "model")):
        with pytest.raises(grpc.RpcError) as err:
            ms.Autocomplete(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)
    with pytest.raises(grpc.RpcError) as err:
        ms.Autocomplete(models_pb2.AutocompleteRequest(model="nope", prefix="a"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:  # an autocomplete model is no XR-Linear retrieval model
        ms.XmrPredict(models_pb2.XmrPredictRequest(model="ac", queries=["jazz"]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_demo_start_trains_a_live_autocomplete_model_once(make_server: Any, sqlite_url: str,
                                                               tmp_path: Path) -> None:
    from dataclasses import replace

    from ltrr_server.config import RetrievalSettings

    settings = server_settings(sqlite_url, demo_policy(), model_dir=str(tmp_path / "models"),
                               demo_autocomplete_sessions=1500,
                               retrieval=replace(RetrievalSettings(), demo_items=N_ITEMS))
    s = make_server(settings)
    got = models_pb2_grpc.ModelServiceStub(s.channel()).Autocomplete(
        models_pb2.AutocompleteRequest(model="autocomplete", prefix="ja", previous_queries=["rock hits"]))
    assert got.model_version == 1 and got.completions and all(c.query.startswith("ja") for c in got.completions)
    s.stop()
    again = make_server(settings)  # a restart serves the registered model; it does not train another
    listed = models_pb2_grpc.ModelServiceStub(again.channel()).ListModels(models_pb2.ListModelsRequest())
    assert [(m.name, m.version, m.live) for m in listed.models] == [("autocomplete", 1, True)]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"index": "btree"}, "index"),
    ({"trie_depth": 0}, "trie_depth"),
    ({"cluster_size": 1}, "cluster_size"),
    ({"beam_size": 0}, "beam_size"),
    ({"prefixes_per_query": 9}, "prefixes_per_query"),
])
def test_bad_training_options_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        AutocompleteParams(**kwargs)
    assert err.value.field == field
