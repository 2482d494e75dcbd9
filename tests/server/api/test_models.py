"""ModelService on a real server: XR-Linear inference, promotion gated on the negative flip rate, the
xmr strategy inside retrieval plans, hot swap under load."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ltrr.v1 import models_pb2, models_pb2_grpc
from ltrr_client.client import LtrrClient, retrieve_request
from ltrr_server.config import Settings, StrategySpec
from ltrr_server.core import models as core
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.xmr import train as xt
from ltrr_server.xmr.model import XmrModel, XmrTrainParams
from ltrr_server.xmr.registry import ModelRegistry
from tests.conftest import TEST_ITEMS, ServerThread, retrieval_server_settings


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld(n_items=TEST_ITEMS, seed=42)


_pairs = xt.demo_pairs


def _settings(db_url: str, tmp_path: Path, **changes: Any) -> Settings:
    """A retrieval server with an xmr strategy over the model "music"."""
    settings = retrieval_server_settings(db_url, tmp_path / "data", model_dir=str(tmp_path / "models"), **changes)
    r = settings.retrieval
    return dataclasses.replace(settings, retrieval=dataclasses.replace(
        r, strategies=(*r.strategies, StrategySpec("xmr", "xmr", (0, 10), {"model": "music"}))))


def _server(make_server: Any, db_url: str, tmp_path: Path, **changes: Any) -> ServerThread:
    return make_server(_settings(db_url, tmp_path, **changes))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def predict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the table of refused predictions: a refused request changes nothing, and a
    retrieval server's first start (its catalog and indexes) takes 2-6 s."""
    folder = tmp_path_factory.mktemp("predict")
    s = ServerThread(_settings(f"sqlite:///{folder / 'ltrr.db'}", folder))
    yield s
    s.stop()


def _registry(db_url: str, tmp_path: Path) -> ModelRegistry:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    return ModelRegistry(engine, tmp_path / "models")


def test_predict_promote_and_serve_inside_plans(make_server: Any, db_url: str, tmp_path: Path,
                                                world: MusicWorld) -> None:
    reg = _registry(db_url, tmp_path)
    xt.train(reg, "music", _pairs(world, 6000), XmrTrainParams())
    s = _server(make_server, db_url, tmp_path)
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    text, target = world.head_queries[0]
    target_id = world.items[target]["id"]

    # Registered but not live: no predictions, and the xmr strategy finds nothing yet.
    with pytest.raises(grpc.RpcError) as err:
        ms.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=[text]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no live version" in err.value.details()
    from ltrr.v1 import retrieval_pb2_grpc
    rs = retrieval_pb2_grpc.RetrievalServiceStub(s.channel())
    assert rs.Retrieve(retrieve_request("retrieval", text, fixed_plan={"xmr": 10})).total_candidates == 0

    promoted = ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=1))
    assert promoted.model.live and promoted.previous_version == 0 and promoted.recall_new > 0.5

    resp = ms.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=[text, "new jazz releases"], k=5))
    assert resp.model_version == 1 and len(resp.predictions) == 2
    assert target_id in [label.id for label in resp.predictions[0].labels]
    assert all(len(p.labels) <= 5 for p in resp.predictions)
    # A batch larger than the event loop predicts itself (one call on a worker thread): every query
    # answered, in order, as if sent alone.
    queries = [q for q, _ in world.head_queries[:150]]
    batch = ms.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=queries, k=3)).predictions
    assert len(batch) == len(queries) > core.INLINE_PREDICT_QUERIES * 2
    for i in (0, core.INLINE_PREDICT_QUERIES, len(queries) - 1):
        alone = ms.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=[queries[i]], k=3)).predictions[0]
        assert [lab.id for lab in batch[i].labels] == [lab.id for lab in alone.labels]

    r = rs.Retrieve(retrieve_request("retrieval", text, fixed_plan={"xmr": 10}))
    assert r.plan == "xmr:10" and target_id in [c.item_id for c in r.candidates]
    assert all(h.strategy == "xmr" for c in r.candidates for h in c.hits)

    listed = ms.ListModels(models_pb2.ListModelsRequest(name="music")).models
    assert [(m.version, m.live) for m in listed] == [(1, True)]


@pytest.mark.parametrize(("req", "code", "field"), [
    (models_pb2.XmrPredictRequest(model="nope", queries=["jazz"]), grpc.StatusCode.NOT_FOUND, "model"),
    (models_pb2.XmrPredictRequest(model="", queries=["jazz"]), grpc.StatusCode.INVALID_ARGUMENT, "model"),
    (models_pb2.XmrPredictRequest(model="music", queries=[]), grpc.StatusCode.INVALID_ARGUMENT, "queries"),
    (models_pb2.XmrPredictRequest(model="music", queries=["jazz", "?!"]), grpc.StatusCode.INVALID_ARGUMENT,
     "queries[1]"),
    (models_pb2.XmrPredictRequest(model="music", queries=["jazz"], k=5000), grpc.StatusCode.INVALID_ARGUMENT, "k"),
    (models_pb2.XmrPredictRequest(model="music", queries=["jazz"] * 1025), grpc.StatusCode.INVALID_ARGUMENT,
     "queries"),
], ids=["unknown model", "no model", "no queries", "query without letters", "k too large", "too many queries"])
def test_bad_predict_requests(predict_server: ServerThread, req: Any, code: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        models_pb2_grpc.ModelServiceStub(predict_server.channel()).XmrPredict(req)
    assert err.value.code() == code and (err.value.details() or "").startswith(field)


def test_a_high_nfr_promotion_is_refused_and_the_congruent_retrain_passes(
    make_server: Any, sqlite_url: str, tmp_path: Path, world: MusicWorld,
) -> None:
    reg = _registry(sqlite_url, tmp_path)
    pairs = _pairs(world, 12000)
    xt.train(reg, "music", xt.Pairs(pairs.queries[:6000], pairs.items[:6000]), XmrTrainParams())
    live = XmrModel.load(Path(reg.get("music", 1)["path"]))
    xt.train(reg, "music", pairs, XmrTrainParams(threshold=0.4))
    xt.train(reg, "music", pairs, XmrTrainParams(threshold=0.4, congruent=1), live=live)
    nfr = {v: xt.compare(live, XmrModel.load(Path(reg.get("music", v)["path"])),
                         Path(reg.get("music", v)["path"]))["negative_flip_rate"] for v in (2, 3)}
    assert nfr[3] < nfr[2]
    s = _server(make_server, sqlite_url, tmp_path, max_nfr=(nfr[2] + nfr[3]) / 2)
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=1))

    with pytest.raises(grpc.RpcError) as err:
        ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"negative flip rate {nfr[2]:.4f}" in err.value.details()
    assert ms.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=["jazz"])).model_version == 1

    ok = ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=3))
    assert ok.model.live and ok.previous_version == 1
    assert ok.negative_flip_rate == pytest.approx(nfr[3])
    forced = ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=2, force=True))
    assert forced.model.live and forced.previous_version == 3  # measured against v3, the live one then
    # Each promotion is in the audit trail, the forced one as such; the refused one is not.
    with LtrrClient(s.target) as c:
        entries = [e for e in c.audit() if e.target == "music"]
    assert [(e.action, e.before["version"], e.after["version"]) for e in entries] == \
        [("model.promote", 0, 1), ("model.promote", 1, 3), ("model.force_promote", 3, 2)]
    assert entries[1].after["negative_flip_rate"] == pytest.approx(nfr[3])


def test_every_version_is_measured_on_the_same_pairs_and_none_trains_on_them(
    tmp_path: Path, sqlite_url: str, world: MusicWorld,
) -> None:
    reg = _registry(sqlite_url, tmp_path)
    pairs = _pairs(world, 6000)
    train_side, held_side = xt.split(pairs)
    both = set(zip(train_side.queries, train_side.items, strict=True)) & set(
        zip(held_side.queries, held_side.items, strict=True))
    assert not both and 0.05 < len(held_side) / len(pairs) < 0.15  # the demo repeats pairs: a random split would not
    xt.train(reg, "music", pairs, XmrTrainParams())
    order = list(range(len(pairs)))
    random.Random(7).shuffle(order)
    xt.train(reg, "music", xt.Pairs([pairs.queries[i] for i in order], [pairs.items[i] for i in order]),
             XmrTrainParams())
    held = [json.loads((Path(reg.get("music", v)["path"]) / xt.HELDOUT_FILE).read_text()) for v in (1, 2)]
    assert sorted(zip(held[0]["queries"], held[0]["items"], strict=True)) == \
        sorted(zip(held[1]["queries"], held[1]["items"], strict=True))
    # The same pairs in another order: a retrain the gate lets through (a split per version refused
    # one like it with a flip rate of 0.27).
    v1 = XmrModel.load(Path(reg.get("music", 1)["path"]))
    v2 = XmrModel.load(Path(reg.get("music", 2)["path"]))
    assert xt.compare(v1, v2, Path(reg.get("music", 2)["path"]))["negative_flip_rate"] <= 0.05


def test_a_version_the_gate_cannot_measure_is_promoted_only_when_forced(
    make_server: Any, sqlite_url: str, tmp_path: Path, world: MusicWorld,
) -> None:
    reg = _registry(sqlite_url, tmp_path)
    xt.train(reg, "music", _pairs(world, 4000, 1), XmrTrainParams())
    xt.train(reg, "music", _pairs(world, 4000, 2), XmrTrainParams())
    (Path(reg.get("music", 2)["path"]) / xt.HELDOUT_FILE).unlink()  # as a folder made by PECOS's own tools
    s = _server(make_server, sqlite_url, tmp_path, max_nfr=1.0)
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=1))  # nothing live: nothing to compare
    with pytest.raises(grpc.RpcError) as err:
        ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be measured" in (err.value.details() or "") and "held-out" in (err.value.details() or "")
    assert ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=2, force=True)).model.live


def test_promotion_swaps_models_without_failing_a_request(make_server: Any, sqlite_url: str, tmp_path: Path,
                                                         world: MusicWorld) -> None:
    reg = _registry(sqlite_url, tmp_path)
    xt.train(reg, "music", _pairs(world, 4000, 1), XmrTrainParams())
    xt.train(reg, "music", _pairs(world, 4000, 2), XmrTrainParams())
    s = _server(make_server, sqlite_url, tmp_path, max_nfr=1.0)
    ms = models_pb2_grpc.ModelServiceStub(s.channel())
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=1))
    seen: set[int] = set()
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        stub = models_pb2_grpc.ModelServiceStub(s.channel())
        while not stop.is_set():
            try:
                seen.add(stub.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=["jazz"])).model_version)
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=2))
    ms.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=1))
    stop.set()
    for t in threads:
        t.join()
    assert not failures and seen >= {1, 2}
