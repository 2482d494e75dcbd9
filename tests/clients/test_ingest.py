"""`ltrr ingest catalog`: bad lines reported, the rest ingested; a second ingest updates in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ltrr_client.cli import main
from ltrr_client.client import LtrrClient
from ltrr_server.config import load_settings
from tests.helpers import rows

CONFIG = """
[[policies]]
name = "retrieval"
interactions = ["hP"]

[retrieval]
policies = ["retrieval"]

[retrieval.strategies.lexical]
budgets = [0, 10]

[retrieval.strategies.vector]
budgets = [0, 10]
"""


def _items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"item-{i}", "type": "song", "title": f"song number {i} of the catalog", "genre": "jazz",
             "popularity": float(i)} for i in range(n)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ingest_reports_bad_lines_and_updates_without_a_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_server: Any,
) -> None:
    cfg = tmp_path / "ltrr.toml"
    cfg.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    args = ["ingest", "catalog", "--config", str(cfg), "--db", url, "--data-dir", str(tmp_path / "data")]
    good = [json.dumps(i) for i in _items(30)]
    bad = ['{"title": "no id"}', json.dumps(_items(1)[0]), "{not json"]
    code = main([*args[:2], str(_write(tmp_path / "a.jsonl", good[:15] + bad + good[15:])), *args[2:]])
    out, err = capsys.readouterr()
    assert code == 1  # some lines were bad
    assert json.loads(out.strip().splitlines()[-1]) | {"seconds": 0, "items_per_second": 0} == {
        "added": 30, "updated": 0, "unchanged": 0, "bad_lines": 3, "seconds": 0, "items_per_second": 0}
    assert "line 16: id: missing or empty" in err
    assert "line 17: id: duplicate id 'item-0' (first on line 1)" in err
    assert "line 18" in err
    assert len(rows(url, "catalog_items")) == 30

    changed = _items(32)
    changed[3]["title"] = "a brand new title for three"
    code = main([*args[:2], str(_write(tmp_path / "b.jsonl", [json.dumps(i) for i in changed])), *args[2:]])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert (report["added"], report["updated"], report["unchanged"]) == (2, 1, 29)

    settings = load_settings(cfg, db_url=url, grpc_port=0, metrics_port=-1, grpc_host="127.0.0.1")
    import dataclasses

    settings = dataclasses.replace(settings, retrieval=dataclasses.replace(settings.retrieval,
                                                                           data_dir=str(tmp_path / "data")))
    s = make_server(settings)
    with LtrrClient(s.target) as c:
        resp = c.retrieve("retrieval", "brand new title", fixed_plan={"lexical": 10})
        assert resp.candidates[0].item_id == "item-3"
        old = c.retrieve("retrieval", "number 3", fixed_plan={"lexical": 10})
        assert "item-3" not in [x.item_id for x in old.candidates]  # the old title is gone from the index
        assert s.core.retriever.strategies["lexical"].num_docs == 32


def test_strict_ingest_takes_nothing_when_a_line_is_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "ltrr.toml"
    cfg.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    path = _write(tmp_path / "a.jsonl", [json.dumps(i) for i in _items(3)] + ['{"id": "x", "embedding": [NaN]}'])
    assert main(["ingest", "catalog", str(path), "--config", str(cfg), "--db", url, "--data-dir",
                 str(tmp_path / "d"), "--strict"]) == 1
    assert "line 4: embedding[0]: must be a finite number" in capsys.readouterr().err
    assert main(["ingest", "catalog", str(tmp_path / "missing.jsonl"), "--config", str(cfg), "--db", url]) == 2
