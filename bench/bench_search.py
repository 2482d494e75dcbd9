"""Search on the 100k demo catalog: ranking and Search latency server-side, LambdaMART training.

    python -m bench.bench_search [--items 100000] [--queries 2000] [--impressions 1000000]

- Ranking alone: the online ranker ordering a union of 200 candidates (the vector strategy at
  200: features, VW scores, exploration, the page's log row), after it has learned 2,000 pages;
  its ceiling is VW parsing and predicting the same 200 lines and nothing else. Bar: p99 < 3 ms.
- Search, every strategy at its largest budget, in-process (the servicer's work without the
  network: plan, strategies, fusion, features, ranking, response message). Bar: p99 < 25 ms.
- ``ltrr train ranker`` from ``--impressions`` logged impressions (pages of 10, written straight
  into the log with random features and engagements), reading included, and the process's peak
  RSS; its ceiling is LightGBM training on the same arrays already in memory. Bars: < 2 min, < 2 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from vowpal_wabbit_next import _core

from bench.bench_retrieve import _pct
from bench.bench_retrieve import _settings as retrieve_settings
from bench.common import save
from ltrr_server import first_start
from ltrr_server.api.search import search_to_proto
from ltrr_server.core.ltrr import Ltrr
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.log import schema as t
from ltrr_server.metrics import Metrics


def _settings(d: Path, items: int) -> Any:
    """bench_retrieve's settings (the demo on SQLite in ``d``, the catalog alone), with a model directory there."""
    return dataclasses.replace(retrieve_settings(d, items), model_dir=str(d / "models"))


def serving(items: int, queries: int) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="ltrr-bench-search-"))
    settings = _settings(d, items)
    db.migrate(db.create_engine(settings.db_url))
    first_start.do_work(settings)
    core = Ltrr(settings, Metrics(CollectorRegistry()))
    core.open_policies()
    core.open_models()
    ranking, retriever = core.ranking, core.retriever
    assert ranking is not None and retriever is not None
    world = MusicWorld(n_items=items, seed=42)
    rng = random.Random(7)
    qs = [world.query(rng) for _ in range(queries)]
    largest = {s.name: max(s.budgets) for s in retriever.specs}
    vector_only = {"vector": max(next(s for s in retriever.specs if s.name == "vector").budgets)}

    async def run() -> dict[str, Any]:
        await core.start_joins()
        # The ranker learns 2,000 pages first: its scores then differ, as in production.
        for q in qs[:2000]:
            s = await core.decisions.search("retrieval", q.text, [], embedding=q.embedding or [])
            shown = [res_id for res_id in (s.retrieval.result.item_ids[j] for j in s.page.order)]
            if q.target in shown:
                ranking.on_joined("retrieval", s.page.record, {world.index[q.target]: 1.0})
        rank_times, bare_times, search_times = [], [], []
        space = ranking.space
        for q in qs:
            r = await core.decisions.retrieve("retrieval", q.text, [], q.embedding or [], fixed_plan=vector_only)
            res = r.result
            assert r.query is not None and r.hints is not None
            t0 = time.perf_counter()
            ranking.rank("retrieval", "bench", res.record.positions, res.fused_scores, res.provenance,
                         r.query.normalized, r.hints, [], "", 10, "ranker", learn=True)
            rank_times.append(time.perf_counter() - t0)
            # The ceiling: VW parsing and scoring the same candidates' lines, nothing else.
            matrix = space.compute(res.record.positions, res.fused_scores, res.provenance, retriever.catalog,
                                   r.query.normalized, "none")
            kinds = retriever.catalog.kinds[np.asarray(res.record.positions, dtype=np.int64)]
            lines = space.lines(matrix, kinds, space.tails(r.hints, [], kinds.tolist(), retriever.catalog))
            ws = ranking.ranker("retrieval")._core
            t0 = time.perf_counter()
            for line in lines:
                ws.predict_one(_core._parse_line_text(ws, line))
            bare_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s = await core.decisions.search("retrieval", q.text, [], embedding=q.embedding or [], fixed_plan=largest)
            search_to_proto(s, "")
            search_times.append(time.perf_counter() - t0)
        return {"candidates": len(res), "rank_p50_ms": _pct(rank_times, 50) * 1000,
                "rank_p99_ms": _pct(rank_times, 99) * 1000, "vw_bare_p50_ms": _pct(bare_times, 50) * 1000,
                "rank_vs_bare": statistics.median(rank_times) / statistics.median(bare_times),
                "search_p50_ms": _pct(search_times, 50) * 1000, "search_p99_ms": _pct(search_times, 99) * 1000}

    out = asyncio.run(run())
    core.close()
    print(f"ranking {out['candidates']} candidates: p50 {out['rank_p50_ms']:.2f} ms, p99 {out['rank_p99_ms']:.2f} ms "
          f"(VW alone on the same lines: p50 {out['vw_bare_p50_ms']:.2f} ms; ratio {out['rank_vs_bare']:.2f}); bar "
          "p99 < 3 ms")
    print(f"Search, every strategy at its largest ({largest}), in-process: p50 {out['search_p50_ms']:.2f} ms, "
          f"p99 {out['search_p99_ms']:.2f} ms; bar p99 < 25 ms")
    return out


def training(impressions: int) -> dict[str, Any]:
    from ltrr_server.ranking.lambdamart import LambdaMartParams, LambdaMartRanker, train_ranker
    from ltrr_server.ranking.pagelog import read_pages
    from ltrr_server.xmr.registry import ModelRegistry

    d = Path(tempfile.mkdtemp(prefix="ltrr-bench-train-ranker-"))
    engine = db.create_engine(f"sqlite:///{d / 'ltrr.db'}")
    db.migrate(engine)
    rng = np.random.default_rng(3)
    names = [f"f{i}" for i in range(19)]
    pages = impressions // 10
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, pages, 5000):
            page_rows, reward_rows = [], []
            for p in range(start, min(start + 5000, pages)):
                x = rng.random((10, len(names)))
                rel = x[:, 0] + 0.5 * x[:, 1]
                clicked = [k for k in range(10) if rng.random() < rel[k] / 1.5 / (k + 1)]
                items = [f"i{p}-{k}" for k in range(10)]
                page_rows.append({"event_id": f"e{p}", "policy": "retrieval", "created_at": float(p),
                                  "ranker": "online", "ranker_version": 0, "probability": 1.0, "swapped": None,
                                  "user_id": "", "items": json.dumps(items), "learn": True,
                                  "features": json.dumps({"names": names, "rows": np.round(x, 4).tolist(),
                                                          "kinds": ["song"] * 10})})
                if clicked:
                    reward_rows.append({"event_id": f"e{p}", "reward_id": "", "value": 1.0,
                                        "engaged": json.dumps([items[k] for k in clicked]), "oracle_best": None,
                                        "oracle_chosen": None, "status": "accepted", "received_at": float(p)})
            conn.execute(t.pages.insert(), page_rows)
            if reward_rows:
                conn.execute(t.rewards.insert(), reward_rows)
    print(f"wrote {pages:,} pages ({impressions:,} impressions) in {time.perf_counter() - t0:.0f}s")
    params = LambdaMartParams()
    registry = ModelRegistry(engine, d / "models")
    t0 = time.perf_counter()
    version, meta = train_ranker(registry, "bench", "retrieval", params)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The ceiling: LightGBM alone on the same pages, already in memory.
    logged = read_pages(engine, "retrieval", split="train")
    t0 = time.perf_counter()
    LambdaMartRanker.train(logged, params)
    bare = time.perf_counter() - t0
    out = {"impressions": meta["impressions"], "train_seconds": seconds, "lightgbm_seconds": bare,
           "train_vs_lightgbm": seconds / bare, "peak_rss_mb": peak_mb}
    print(f"ltrr train ranker, {meta['impressions']:,} training impressions: {seconds:.1f}s, peak RSS {peak_mb:.0f} "
          f"MB (LightGBM alone on the same arrays: {bare:.1f}s; ratio {seconds / bare:.2f}); bars < 120 s, < 2 GB")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--impressions", type=int, default=1_000_000)
    p.add_argument("--only", choices=["serving", "training"])
    a = p.parse_args()
    res: dict[str, Any] = {}
    if a.only != "training":
        res |= serving(a.items, a.queries)
    if a.only != "serving":
        res |= training(a.impressions)
    save("search", res)


if __name__ == "__main__":
    main()
