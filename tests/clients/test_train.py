"""`ltrr train xmr`: from demo pairs, a pairs file or the log's engagements, into the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ltrr_client.cli import main
from ltrr_client.client import LtrrClient
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.xmr.train import pairs_from_log
from tests.conftest import TEST_ITEMS, retrieval_server_settings


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "ltrr.toml"
    cfg.write_text(f'[server]\nmodel_dir = "{tmp_path / "models"}"\n')
    return cfg


def test_train_from_demo_pairs_and_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    base = ["train", "xmr", "--name", "music", "--config", str(_config(tmp_path)), "--db", url]
    assert main([*base, "--demo-pairs", "3000", "--items", str(TEST_ITEMS), "--nr-splits", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["name"], out["version"], out["nr_splits"]) == ("music", 1, 8)
    # About a tenth held out, by a stable hash of each pair: the rest trained on.
    assert out["pairs"] + out["heldout_pairs"] == 3000 and 200 < out["heldout_pairs"] < 400
    assert 0 < out["recall_at_10"] <= out["recall_at_100"] <= 1
    # Under the database's own folder: model_dir/db-<its id>/<name>/v<version>.
    [folder] = (tmp_path / "models").glob("db-*/music/v1")
    assert (folder / "xlinear").is_dir() and (folder.parents[1] / ".ltrr-database").is_file()

    lines = [json.dumps({"query": f"query {i % 50}", "item_id": f"item-{i % 50}"}) for i in range(200)]
    (tmp_path / "pairs.jsonl").write_text("\n".join([*lines, '{"query": 3}']) + "\n")
    assert main([*base, "--pairs", str(tmp_path / "pairs.jsonl")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["version"] == 2
    assert "line 201: query: missing or empty" in captured.err

    assert main([*base, "--pairs", str(tmp_path / "missing.jsonl")]) == 2
    assert main([*base, "--demo-pairs", "300", "--items", str(TEST_ITEMS), "--congruent", "1",
                 "--name", "fresh"]) == 2  # congruent training needs a live version
    assert "fresh" in capsys.readouterr().err


def test_pairs_from_the_log_are_the_engaged_items_of_logged_queries(make_server: Any, sqlite_url: str,
                                                                    tmp_path: Path) -> None:
    world = MusicWorld(n_items=TEST_ITEMS, seed=42)
    s = make_server(retrieval_server_settings(sqlite_url, tmp_path / "data"))
    text, target = world.head_queries[0]
    with LtrrClient(s.target) as c:
        for query in (text, text.upper() + "!"):
            r = c.retrieve("retrieval", query, fixed_plan={"lexical": 10})
            c.report_reward(r.event_id, 0.0, engaged=[world.items[target]["id"]])
        c.retrieve("retrieval", "no engagement here", fixed_plan={"lexical": 10})
    s.stop()
    pairs = pairs_from_log(db.create_engine(sqlite_url))
    assert list(zip(pairs.queries, pairs.items, strict=True)) == [(text, world.items[target]["id"])] * 2


def test_eval_compares_xmr_with_lexical_and_vector_on_held_out_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    world = MusicWorld(n_items=TEST_ITEMS, seed=42)
    cfg = tmp_path / "ltrr.toml"
    cfg.write_text(f"""
[server]
model_dir = "{tmp_path / 'models'}"
[[policies]]
name = "retrieval"
[retrieval]
policies = ["retrieval"]
data_dir = "{tmp_path / 'data'}"
[retrieval.strategies.lexical]
budgets = [0, 10]
[retrieval.strategies.vector]
budgets = [0, 10]
""")
    url = f"sqlite:///{tmp_path / 'l.db'}"
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in world.catalog()) + "\n")
    common = ["--config", str(cfg), "--db", url]
    assert main(["ingest", "catalog", str(tmp_path / "items.jsonl"), *common]) == 0
    assert main(["train", "xmr", "--name", "music", "--demo-pairs", "4000", "--items", str(TEST_ITEMS), *common]) == 0
    capsys.readouterr()
    assert main(["eval", "xmr", "--name", "music", "--version", "1", *common]) == 0
    out = capsys.readouterr().out.splitlines()
    held, _, rest = out[0].partition(" ")
    assert rest == "held-out pairs of music v1" and 280 < int(held) < 520
    rows = {line.split()[0]: [float(x) for x in line.split()[-3:]] for line in out[2:]}
    assert set(rows) == {"xmr", "lexical", "vector"}
    for r10, r100, _ in rows.values():
        assert 0 <= r10 <= r100 <= 1
    assert rows["xmr"][1] > 0.5  # head and new-release queries repeat: XR-Linear learns them
    assert main(["eval", "xmr", "--name", "music", *common]) == 2  # no live version yet


def test_train_autocomplete_registers_a_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    base = ["train", "autocomplete", "--name", "ac", "--config", str(_config(tmp_path)), "--db", url]
    assert main([*base, "--demo-sessions", "500", "--items", str(TEST_ITEMS), "--index", "trie",
                 "--prefixes-per-query", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["name"], out["version"], out["index"]) == ("ac", 1, "trie") and out["labels"] > 100
    # At most 2 prefixes per past query, and a demo session has at most 4 queries (8 would be ~8,000).
    assert out["prefixes_per_query"] == 2 and out["examples"] <= 2 * 500 * 4
    (tmp_path / "s.jsonl").write_text('{"queries": ["jazz", "jazz live"]}\n{"nope": 1}\n' * 20)
    assert main([*base, "--sessions", str(tmp_path / "s.jsonl")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["version"] == 2
    assert "skipped line 2" in captured.err


def test_register_a_folder_trained_with_pecos_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ltrr_server.xmr.model import XmrModel
    from ltrr_server.xmr.train import demo_pairs

    pairs = demo_pairs(MusicWorld(n_items=TEST_ITEMS, seed=42), 1000)
    model = XmrModel.train(pairs.queries, pairs.items)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    model.vectorizer.save(str(folder / "vectorizer"))
    model.model.save(str(folder / "xlinear"))  # PECOS's own npz format
    (folder / "labels.json").write_text(json.dumps(model.labels))
    url = f"sqlite:///{tmp_path / 'l.db'}"
    base = ["register", "xmr", "--name", "ext", "--config", str(_config(tmp_path)), "--db", url]
    assert main([*base, str(folder)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"name": "ext", "version": 1}
    (folder / "labels.json").write_text(json.dumps(model.labels[:-1]))
    assert main([*base, str(folder)]) == 2
    assert "labels.json" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "missing")]) == 2
