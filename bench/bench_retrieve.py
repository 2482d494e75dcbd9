"""Retrieve on the 100k demo catalog: server-side latency, each strategy against its library, ingest, RSS.

    python -m bench.bench_retrieve [--items 100000] [--queries 2000]

- Ingest: items/s of a fresh ingest (SQL rows, tantivy index, encoder fit, HNSW build).
- Retrieve with every strategy at its largest budget, in-process (the servicer's work without the
  network: plan, strategies, fusion, response message): p50/p99 over the demo world's queries.
  And end to end through a real gRPC server on this machine, one call at a time.
- Each strategy's own latency against its library called directly on the same queries: tantivy's
  parse + search (2x the budget, as the popularity prior re-ranks) + fast-field read of the item
  positions, usearch's search; a ratio of 1.0 means no overhead.
- RSS of a process holding the catalog and every index, and its growth per 100k items.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import rss_mb, save
from ltrr_server import first_start
from ltrr_server.api.retrieval import retrieval_to_proto
from ltrr_server.config import load_settings
from ltrr_server.core.ltrr import Ltrr
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.metrics import Metrics
from ltrr_server.strategies.base import Query


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def _settings(d: Path, items: int) -> Any:
    s = load_settings(env={}, db_url=f"sqlite:///{d / 'ltrr.db'}", grpc_port=0, metrics_port=-1)
    return dataclasses.replace(s, retrieval=dataclasses.replace(s.retrieval, data_dir=str(d / "data"),
                                                                demo_items=items),
                               demo_autocomplete_sessions=0)  # the catalog alone: no autocomplete training


def run(items: int, queries: int) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="ltrr-bench-retrieve-"))
    rss0 = rss_mb_self()
    settings = _settings(d, items)
    db.migrate(db.create_engine(settings.db_url))
    # The ingest itself, in this process (a server's first start runs it in a child process).
    t0 = time.perf_counter()
    first_start.do_work(settings)
    ingest_s = time.perf_counter() - t0
    gc.collect()
    rss_ingested = rss_mb_self()
    core = Ltrr(settings, Metrics(CollectorRegistry()))
    core.open_policies()
    core.open_models()  # loads what the ingest stored, as a server does
    rss_loaded = rss_mb_self()
    retriever = core.retriever
    assert retriever is not None
    world = MusicWorld(n_items=items, seed=42)
    rng = random.Random(7)
    qs = [world.query(rng) for _ in range(queries)]
    largest = {s.name: max(s.budgets) for s in retriever.specs}
    print(f"ingest: {items} items in {ingest_s:.1f}s ({items / ingest_s:.0f} items/s); RSS {rss_ingested:.0f} MB "
          f"right after it, {rss_loaded:.0f} MB once loaded as a server does (process before: {rss0:.0f} MB)")

    async def serve_side() -> list[float]:
        await core.start_joins()
        out = []
        for q in qs:
            t = time.perf_counter()
            r = await core.decisions.retrieve("retrieval", q.text, [], q.embedding or [], fixed_plan=largest)
            retrieval_to_proto(r, 0, "")
            out.append(time.perf_counter() - t)
        return out

    times = asyncio.run(serve_side())
    res: dict[str, Any] = {
        "items": items, "queries": queries, "ingest_seconds": ingest_s, "ingest_items_per_second": items / ingest_s,
        "rss_before_mb": rss0, "rss_ingested_mb": rss_ingested, "rss_loaded_mb": rss_loaded,
        "retrieve_p50_ms": _pct(times, 50) * 1000, "retrieve_p99_ms": _pct(times, 99) * 1000,
        "retrieve_mean_ms": statistics.fmean(times) * 1000,
    }
    print(f"Retrieve, every strategy at its largest budget ({largest}), in-process: "
          f"p50 {res['retrieve_p50_ms']:.2f} ms, p99 {res['retrieve_p99_ms']:.2f} ms")

    # Each strategy against its library, on the same queries and budgets.
    lex = retriever.strategies["lexical"]
    vec = retriever.strategies["vector"]
    prepared = [retriever.prepare(q.text, q.embedding or []) for q in qs]
    lex_budget, vec_budget = largest["lexical"], largest["vector"]

    def time_calls(fn: Any, args: list[Any]) -> list[float]:
        out = []
        for a in args:
            t = time.perf_counter()
            fn(a)
            out.append(time.perf_counter() - t)
        return out

    index, searcher = lex._index, lex._searcher  # type: ignore[attr-defined]
    fields, boosts = lex._fields, lex.boosts  # type: ignore[attr-defined]

    def tantivy_direct(q: Query) -> None:
        hits = searcher.search(index.parse_query(" ".join(q.tokens), fields, field_boosts=boosts), 2 * lex_budget).hits
        addrs = [a for _, a in hits]
        searcher.fast_field_values("idx", addrs)

    usearch_index = vec._index  # type: ignore[attr-defined]
    vectors = [q.embedding for q in prepared]

    for name, own, direct, args in (
        ("lexical", lambda q: lex.retrieve(q, lex_budget), tantivy_direct, prepared),
        ("vector", lambda q: vec.retrieve(q, vec_budget), None, prepared),
    ):
        if name == "vector":
            ours = time_calls(own, args)
            lib = time_calls(lambda v: usearch_index.search(v, vec_budget), vectors)
        else:
            ours = time_calls(own, args)
            lib = time_calls(direct, args)
        ratio = statistics.median(ours) / statistics.median(lib)
        res[f"{name}_p50_ms"] = _pct(ours, 50) * 1000
        res[f"{name}_library_p50_ms"] = _pct(lib, 50) * 1000
        res[f"{name}_ratio"] = ratio
        print(f"{name}: ours p50 {res[f'{name}_p50_ms']:.3f} ms, library p50 {res[f'{name}_library_p50_ms']:.3f} ms:"
              f" ratio {ratio:.2f}")
    for name in ("memory", "explore"):
        s = retriever.strategies[name]
        budget = largest[name]
        ts = time_calls(lambda q, s=s, b=budget: s.retrieve(q, b), prepared)  # type: ignore[misc]
        res[f"{name}_p50_ms"] = _pct(ts, 50) * 1000
        res[f"{name}_p99_ms"] = _pct(ts, 99) * 1000
    core.close()
    return res


def rss_mb_self() -> float:
    import os

    return rss_mb(os.getpid())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=2000)
    a = p.parse_args()
    save("retrieve", run(a.items, a.queries))


if __name__ == "__main__":
    main()
