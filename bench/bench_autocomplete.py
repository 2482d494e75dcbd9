"""Autocompletion at a million labels: p50/p99 per call, quality, and the RSS of the loaded models.

    python -m bench.bench_autocomplete [--labels 1000000] [--indexes hybrid,kmeans,trie] [--prefixes 8] [--work DIR]

The label space is the demo's 30,000 sessions (about 23k distinct queries, the Zipfian head) plus
long-tail sessions (``tail_sessions``: titles, titles with artists, refinements and typos) up to
``--labels`` distinct past queries. Each index is trained once into ``--work`` (kept, so a rerun
measures without retraining) and saved as PECOS's memory-mapped model.

Each model is then measured in a fresh process, so that RSS is that of a server holding it: the
interpreter with ltrr's imports, the process after loading, after 20k completions, and after also
loading the XR-Linear demo model (100k items, as ``bench_xmr`` trains it) and predicting every held-out
query with it (its memory-mapped pages count once touched). Completions are typed a
character at a time for every held-out demo query that follows a previous one (the ``ltrr eval
autocomplete`` protocol), in-process and on one thread; MRR@10 against most-popular is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import save

MEASURE_PREFIXES = (1, 2, 3, 4, 5)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sessions(labels: int, items: int) -> list[list[str]]:
    from ltrr_server.autocomplete.sessions import demo_sessions, tail_sessions
    from ltrr_server.demo.music import MusicWorld

    world = MusicWorld(n_items=items, seed=42)
    demo = demo_sessions(world, 30_000, seed=0)
    head = frozenset(q for s in demo for q in s)
    return demo + tail_sessions(world, max(0, labels - len(head)), seed=3, exclude=head)


def _held_out(items: int) -> list[list[str]]:
    from ltrr_server.autocomplete.sessions import demo_sessions
    from ltrr_server.demo.music import MusicWorld

    return demo_sessions(MusicWorld(n_items=items, seed=42), 3_000, seed=1000)


def train(work: Path, index: str, labels: int, items: int, prefixes: int) -> Path:
    from ltrr_server.autocomplete.model import AutocompleteModel, AutocompleteParams

    folder = work / f"{index}-{labels}-p{prefixes}"
    if (folder / "meta.json").exists():
        _log(f"{index}: using {folder}")
        return folder
    sessions = _sessions(labels, items)
    _log(f"{index}: training on {len(sessions)} sessions")
    t0 = time.perf_counter()
    model = AutocompleteModel.train(sessions, AutocompleteParams(index=index, prefixes_per_query=prefixes),
                                    progress=lambda s, a, b: _log(f"  {index} {a}/{b} {s}"))
    _log(f"{index}: trained in {time.perf_counter() - t0:.0f}s, {model.meta['labels']} labels")
    model.save(folder)
    return folder


def train_xmr(work: Path) -> Path:
    from ltrr_server.demo.music import MusicWorld
    from ltrr_server.xmr import train as xt
    from ltrr_server.xmr.model import XmrModel, XmrTrainParams

    folder = work / "xmr-demo"
    if (folder / "meta.json").exists():
        return folder
    _log("xmr: training the demo model (100k items, 120k pairs)")
    pairs = xt.demo_pairs(MusicWorld(n_items=100_000, seed=42), 120_000, 1)
    XmrModel.train(pairs.queries, pairs.items, XmrTrainParams()).save(folder)
    return folder


def measure(folder: Path, xmr_folder: Path, held_file: Path) -> dict[str, Any]:
    """Runs in a fresh process: RSS around loading, then latency and MRR@10 by prefix length."""
    import numpy as np

    from ltrr_server.autocomplete.evaluate import evaluate
    from ltrr_server.autocomplete.model import AutocompleteModel
    from ltrr_server.xmr.model import XmrModel

    held = json.loads(held_file.read_text())  # made by the parent: no music world in this process's RSS
    import pecos.xmc.xlinear.model  # noqa: F401 - counted in the baseline, as a server imports it

    base = _rss_mb()
    t0 = time.perf_counter()
    model = AutocompleteModel.load(folder)
    load_s = time.perf_counter() - t0
    loaded = _rss_mb()
    methods: dict[str, Any] = {
        "model": lambda p, x, k: [q for q, _ in model.complete(p, x, k)],
        "most popular": lambda p, x, k: [q for q, _ in model.popular.complete(x, k)],
    }
    table = evaluate(methods, held, MEASURE_PREFIXES)
    cases = [(s[t - 1], s[t]) for s in held for t in range(1, len(s))]
    lat = []
    for prev, target in cases:  # every prefix length, for one p99 over the whole typing
        for n in range(1, min(len(target), 8) + 1):
            t = time.perf_counter()
            model.complete(prev, target[:n], 10)
            lat.append(time.perf_counter() - t)
    used = _rss_mb()
    xmr = XmrModel.load(xmr_folder)  # memory-mapped: its pages count once queries have touched them
    queries = [q for s in held for q in s]
    for i in range(0, len(queries), 64):
        xmr.predict(queries[i:i + 64], 10)
    both = _rss_mb()
    return {"labels": model.meta["labels"], "index": model.meta["index"], "load_seconds": load_s,
            "rss_base_mb": base, "rss_loaded_mb": loaded, "rss_after_use_mb": used, "rss_with_xmr_mb": both,
            "p50_ms": float(np.percentile(lat, 50) * 1000), "p99_ms": float(np.percentile(lat, 99) * 1000),
            "calls": len(lat), "by_prefix": table}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=120_000, help="music world size the long tail names")
    p.add_argument("--indexes", default="hybrid,kmeans,trie")
    p.add_argument("--prefixes", type=int, default=8,
                   help="typed prefixes learned per past query (1-8); 1 trains about 8x faster")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "ltrr-bench-autocomplete"))
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process
    p.add_argument("--xmr", help=argparse.SUPPRESS)
    p.add_argument("--held", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(Path(a.measure), Path(a.xmr), Path(a.held))))
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    xmr_folder = train_xmr(work)
    held_file = work / f"held-out-sessions-{a.items}.json"
    if not held_file.exists():
        held_file.write_text(json.dumps(_held_out(a.items)))
    res: dict[str, Any] = {"labels": a.labels, "prefixes_per_query": a.prefixes}
    for index in a.indexes.split(","):
        folder = train(work, index, a.labels, a.items, a.prefixes)
        _log(f"{index}: measuring in a fresh process")
        out = subprocess.run([sys.executable, "-m", "bench.bench_autocomplete", "--measure", str(folder),
                              "--xmr", str(xmr_folder), "--held", str(held_file)],
                             check=True, capture_output=True, text=True, env=os.environ)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res[index] = r
        mrr = " / ".join(f"{r['by_prefix']['model'][str(n)]['mrr_at_10']:.3f}" for n in MEASURE_PREFIXES)
        pop = " / ".join(f"{r['by_prefix']['most popular'][str(n)]['mrr_at_10']:.3f}" for n in MEASURE_PREFIXES)
        print(f"{index}: {r['labels']} labels, loaded in {r['load_seconds']:.1f}s; "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms over {r['calls']} calls (prefixes 1-8)\n"
              f"  MRR@10 by prefix 1-5: {mrr}   (most popular: {pop})\n"
              f"  RSS MB: imports {r['rss_base_mb']:.0f}, loaded {r['rss_loaded_mb']:.0f}, "
              f"after use {r['rss_after_use_mb']:.0f}, with the XR-Linear demo model {r['rss_with_xmr_mb']:.0f}",
              flush=True)
    save("autocomplete", res)


if __name__ == "__main__":
    main()
