"""XR-Linear serving against raw libpecos predict on the same model and inputs.

    python -m bench.bench_xmr [--items 100000] [--pairs 120000] [--queries 2000]

Trains a model on the demo music world's (query, item) pairs (word 1-2 grams + character
trigrams TF-IDF, 16-ary label tree, weight threshold 0.1), loads it predict-only, then times per
query, alternating so that the machine's drift hits both alike:
- raw: PECOS's vectorizer ``predict`` + ``XLinearModel.predict`` (beam 10, top 10) on one query;
- ltrr in-process: ``XmrModel.predict`` (the same calls plus mapping labels to item ids);
- ltrr served: ``ModelService.XmrPredict`` through a real gRPC server on this machine;
- echo: the same call to a server that answers at once with 10 fixed labels per query
  (``bench.echo_server.XmrEcho``): the transport's share, which no server can avoid;
and per query in batches of 256 (raw: one vectorize + predict call; ltrr: one ``XmrModel.predict``;
served: one XmrPredict).
The served ratio is against raw alone and against raw + echo (the library plus the round trip).
Also: training time, held-out recall@10/@100, and the model folder's size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.common import save
from ltrr.v1 import models_pb2, models_pb2_grpc
from ltrr_server.config import RetrievalSettings, load_settings
from ltrr_server.demo.music import MusicWorld
from ltrr_server.log import db
from ltrr_server.xmr import train as xt
from ltrr_server.xmr.model import XmrModel, XmrTrainParams
from ltrr_server.xmr.registry import ModelRegistry


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) * 1000


def run(items: int, n_pairs: int, n_queries: int) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="ltrr-bench-xmr-"))
    url = f"sqlite:///{d / 'ltrr.db'}"
    engine = db.create_engine(url)
    db.migrate(engine)
    registry = ModelRegistry(engine, d / "models")
    world = MusicWorld(n_items=items, seed=42)
    t0 = time.perf_counter()
    version, metrics = xt.train(registry, "music", xt.demo_pairs(world, n_pairs, 1),
                                XmrTrainParams(), progress=lambda s, a, b: print(f"  {s}", flush=True))
    train_s = time.perf_counter() - t0
    print(f"trained on {n_pairs} pairs in {train_s:.1f}s: recall@10 {metrics['recall_at_10']:.3f}, "
          f"@100 {metrics['recall_at_100']:.3f}")
    folder = Path(registry.get("music", version)["path"])
    model = XmrModel.load(folder)
    # RSS is no measure here (training's freed memory is reused): the folder's size is.
    model_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    test_rng = random.Random(7)
    texts = [xt.normalize(world.query(test_rng).text) for _ in range(n_queries)]

    def raw(text: str) -> None:
        x = model.vectorizer.predict([text])
        model.model.predict(x, beam_size=10, only_topk=10, threads=1)

    def ours(text: str) -> None:
        model.predict([text], k=10)

    settings = load_settings(env={}, db_url=url, grpc_port=0, metrics_port=-1, grpc_host="127.0.0.1",
                             model_dir=str(d / "models"))
    # Only what XmrPredict needs: no catalog, no demo autocomplete model trained at start.
    settings = dataclasses.replace(settings, retrieval=RetrievalSettings(), policies=settings.policies[:1],
                                   demo_autocomplete_sessions=0)
    from ltrr_server.app import build_server

    loop = asyncio.new_event_loop()
    import threading

    threading.Thread(target=loop.run_forever, daemon=True).start()
    server, port = asyncio.run_coroutine_threadsafe(build_server(settings), loop).result(120)
    stub = models_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stub.PromoteModel(models_pb2.PromoteModelRequest(name="music", version=version))

    def served(text: str) -> None:
        stub.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=[text], k=10))

    from bench.echo_server import XmrEcho

    async def start_echo() -> tuple[grpc.aio.Server, int]:
        echo_server = grpc.aio.server()
        models_pb2_grpc.add_ModelServiceServicer_to_server(XmrEcho(), echo_server)
        echo_port = echo_server.add_insecure_port("127.0.0.1:0")
        await echo_server.start()
        return echo_server, echo_port

    echo_server, echo_port = asyncio.run_coroutine_threadsafe(start_echo(), loop).result(60)
    echo_stub = models_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{echo_port}"))

    def echo(text: str) -> None:
        echo_stub.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=[text], k=10))

    times: dict[str, list[float]] = {"raw": [], "ours": [], "served": [], "echo": []}
    fns = [("raw", raw), ("ours", ours), ("served", served), ("echo", echo)]
    for text in texts[:50]:  # warm-up
        for _, fn in fns:
            fn(text)
    order_rng = random.Random(3)
    for text in texts:
        order_rng.shuffle(fns)  # no fixed order: caches warmed by one call do not favour the next
        for name, fn in fns:
            t = time.perf_counter()
            fn(text)
            times[name].append(time.perf_counter() - t)
    # Batches: the per-call costs (gRPC, Python) spread over many queries.
    batch = 256
    batches = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    for name in ("raw_batch", "ours_batch", "served_batch", "echo_batch"):
        times[name] = []
    for b in batches * 3:  # 2,000 queries make 7 batches: three passes for a steadier median
        t = time.perf_counter()
        model.model.predict(model.vectorizer.predict(b), beam_size=10, only_topk=10, threads=1)
        times["raw_batch"].append((time.perf_counter() - t) / len(b))
        t = time.perf_counter()
        model.predict(b, k=10)
        times["ours_batch"].append((time.perf_counter() - t) / len(b))
        t = time.perf_counter()
        stub.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=b, k=10))
        times["served_batch"].append((time.perf_counter() - t) / len(b))
        t = time.perf_counter()
        echo_stub.XmrPredict(models_pb2.XmrPredictRequest(model="music", queries=b, k=10))
        times["echo_batch"].append((time.perf_counter() - t) / len(b))
    asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(60)
    asyncio.run_coroutine_threadsafe(echo_server.stop(1.0), loop).result(60)
    res: dict[str, Any] = {"items": items, "pairs": n_pairs, "queries": n_queries, "train_seconds": train_s,
                           "recall_at_10": metrics["recall_at_10"], "recall_at_100": metrics["recall_at_100"],
                           "model_folder_mb": model_mb}
    for name, ts in times.items():
        res[f"{name}_p50_ms"], res[f"{name}_p99_ms"] = _pct(ts, 50), _pct(ts, 99)
    res["in_process_ratio"] = res["ours_p50_ms"] / res["raw_p50_ms"]
    res["served_ratio"] = res["served_p50_ms"] / res["raw_p50_ms"]
    res["in_process_batch_ratio"] = res["ours_batch_p50_ms"] / res["raw_batch_p50_ms"]
    res["served_batch_ratio"] = res["served_batch_p50_ms"] / res["raw_batch_p50_ms"]
    res["served_vs_raw_plus_echo"] = res["served_p50_ms"] / (res["raw_p50_ms"] + res["echo_p50_ms"])
    res["served_batch_vs_raw_plus_echo"] = res["served_batch_p50_ms"] / (res["raw_batch_p50_ms"]
                                                                         + res["echo_batch_p50_ms"])
    for name in times:
        print(f"{name:>12}: p50 {res[f'{name}_p50_ms']:.3f} ms, p99 {res[f'{name}_p99_ms']:.3f} ms")
    print(f"in-process / raw: {res['in_process_ratio']:.2f}; served over gRPC / raw: {res['served_ratio']:.2f}, "
          f"/ (raw + echo): {res['served_vs_raw_plus_echo']:.2f}; batches of {batch}: in-process "
          f"{res['in_process_batch_ratio']:.2f}, served {res['served_batch_ratio']:.2f}, / (raw + echo): "
          f"{res['served_batch_vs_raw_plus_echo']:.2f}; "
          f"model folder {model_mb:.0f} MB")
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--pairs", type=int, default=120_000)
    p.add_argument("--queries", type=int, default=2000)
    a = p.parse_args()
    save("xmr", run(a.items, a.pairs, a.queries))


if __name__ == "__main__":
    main()
