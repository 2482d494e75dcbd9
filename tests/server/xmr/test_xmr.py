"""XR-Linear: training on the music world's pairs, the model folder, the registry, NFR and congruent training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ltrr_server.demo.music import MusicWorld
from ltrr_server.errors import FailedPrecondition, InvalidArgument, NotFound
from ltrr_server.log import db
from ltrr_server.xmr import train as xt
from ltrr_server.xmr.model import XmrModel, XmrTrainParams
from ltrr_server.xmr.registry import ModelRegistry

N_ITEMS = 2000


@pytest.fixture(scope="module")
def world() -> MusicWorld:
    return MusicWorld(n_items=N_ITEMS, seed=42)


world_pairs = xt.demo_pairs


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'l.db'}")
    db.migrate(engine)
    return ModelRegistry(engine, tmp_path / "models")


def test_trained_model_finds_repeated_queries_and_round_trips(registry: ModelRegistry, world: MusicWorld) -> None:
    version, metrics = xt.train(registry, "music", world_pairs(world, 6000), XmrTrainParams())
    assert version == 1
    assert metrics["recall_at_10"] > 0.5 and metrics["recall_at_100"] >= metrics["recall_at_10"]
    assert metrics["labels"] <= N_ITEMS and 450 < metrics["heldout_pairs"] < 750
    row = registry.get("music", 1)
    assert not row["live"] and row["metrics"]["recall_at_10"] == metrics["recall_at_10"]
    model = XmrModel.load(Path(row["path"]))  # the predict-only C++ model
    text, target = world.head_queries[0]
    preds = model.predict([text, "new jazz releases"], k=10)
    assert len(preds) == 2 and all(len(p) <= 10 for p in preds)
    assert world.items[target]["id"] in [label for label, _ in preds[0]]
    scores = [s for _, s in preds[0]]
    assert scores == sorted(scores, reverse=True)
    assert model.predict([], k=10) == []


def test_a_folder_trained_elsewhere_registers_and_a_corrupt_one_is_refused(
    registry: ModelRegistry, world: MusicWorld, tmp_path: Path,
) -> None:
    model = XmrModel.train(*(lambda p: (p.queries, p.items))(world_pairs(world, 1000)))
    good = tmp_path / "elsewhere"
    model.save(good)
    # As PECOS's own tools write it: the npz format (ltrr itself saves the memory-mapped one).
    shutil.rmtree(good / "xlinear")
    model.model.save(str(good / "xlinear"))
    assert registry.register("ext", "xmr", good, {"source": "elsewhere"}) == 1
    assert registry.register("ours", "xmr", model, {}) == 1
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    shutil.rmtree(broken / "xlinear")
    with pytest.raises(FailedPrecondition, match="xlinear is missing"):
        registry.register("ext", "xmr", broken, {})
    garbage = tmp_path / "garbage"
    shutil.copytree(good, garbage)
    for f in (garbage / "xlinear").rglob("*"):
        if f.is_file():
            f.write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition, match="cannot load"):
        registry.register("ext", "xmr", garbage, {})
    # A truncated memory-mapped store makes PECOS abort its process: the check runs in a child.
    truncated = tmp_path / "truncated"
    shutil.copytree(registry.get("ours", 1)["path"], truncated)
    for f in (truncated / "xlinear").rglob("W.mmap_store"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(FailedPrecondition, match="not a valid PECOS MMAP file"):
        registry.register("ext", "xmr", truncated, {})
    assert [r["version"] for r in registry.versions("ext")] == [1]  # nothing half-registered


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"beam_size": 0}, "beam_size"),
    ({"threshold": 1.5}, "threshold"),
    ({"nr_splits": 1}, "nr_splits"),
    ({"max_leaf_size": 1}, "max_leaf_size"),
    ({"congruent": -1}, "congruent"),
    ({"congruent": float("nan")}, "congruent"),
])
def test_bad_training_options_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        XmrTrainParams(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_registry_errors(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound):
        registry.get("nope")
    with pytest.raises(InvalidArgument) as err:
        xt.train(registry, "m", xt.Pairs(["a"], ["b"]), XmrTrainParams())
    assert err.value.field == "pairs"
    with pytest.raises(InvalidArgument) as err:
        registry.register("bad name!", "xmr", Path("/nonexistent"), {})
    assert err.value.field == "name"


def test_congruent_training_lowers_the_negative_flip_rate(registry: ModelRegistry, world: MusicWorld) -> None:
    """A retrain on more data with heavy weight pruning flips many pairs the live model got right
    (over the gate's 0.05); the same training distilling the live model's right answers flips at
    least a third fewer, at no lower recall."""
    pairs = world_pairs(world, 12000)
    first = xt.Pairs(pairs.queries[:6000], pairs.items[:6000])
    v1, _ = xt.train(registry, "m", first, XmrTrainParams())
    live = XmrModel.load(Path(registry.get("m", v1)["path"]))
    pruned = XmrTrainParams(threshold=0.4)
    v2, _ = xt.train(registry, "m", pairs, pruned)
    v3, _ = xt.train(registry, "m", pairs, XmrTrainParams(threshold=0.4, congruent=1), live=live)
    plain = xt.compare(live, XmrModel.load(Path(registry.get("m", v2)["path"])), Path(registry.get("m", v2)["path"]))
    cong = xt.compare(live, XmrModel.load(Path(registry.get("m", v3)["path"])), Path(registry.get("m", v3)["path"]))
    assert plain["heldout_pairs"] == cong["heldout_pairs"] > 900  # the same held-out pairs
    assert plain["negative_flip_rate"] > 0.05
    assert cong["negative_flip_rate"] <= plain["negative_flip_rate"] * 2 / 3, (plain, cong)
    assert cong["recall_new"] >= plain["recall_new"] - 0.01, (plain, cong)


def test_pairs_file_reports_bad_lines() -> None:
    pairs, errors = xt.read_pairs(['{"query": "Blue Train", "item_id": "song-1"}', '{"query": "", "item_id": "x"}',
                                   '{"query": "x"}', "nope"])
    assert pairs.queries == ["blue train"] and pairs.items == ["song-1"]
    assert errors == ["line 2: query: missing or empty", "line 3: item_id: missing or empty",
                      "line 4: not valid JSON: Expecting value"]


def test_a_model_saved_after_the_vector_strategy_was_imported_loads(tmp_path: Path) -> None:
    # usearch links its own C++ runtime: imported before PECOS, it made PECOS write param.json files
    # cut short at '"bias": ', which the first start's process did. A fresh interpreter, that order.
    script = f"""
import ltrr_server.strategies.vector
from pathlib import Path
from ltrr_server.demo.music import MusicWorld
from ltrr_server.xmr import train as xt
from ltrr_server.xmr.model import XmrModel
pairs = xt.demo_pairs(MusicWorld(n_items=500, seed=42), 300)
XmrModel.train(pairs.queries, pairs.items).save(Path({str(tmp_path / "m")!r}))
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert XmrModel.load(tmp_path / "m").predict(["jazz"], k=3)
