"""MRR@10 and success@1 by prefix length, with latency, on held-out sessions.

Each held-out query that follows a previous one in its session is typed a character at a time;
at each prefix length a method sees the previous query and the prefix.

>>> table = evaluate({"echo": lambda prev, prefix, k: [prefix + "z"]}, [["a", "bz"]], (1,))
>>> table["echo"][1]["mrr_at_10"], table["echo"][1]["success_at_1"]
(1.0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

Complete = Callable[[str, str, int], list[str]]


def evaluate(methods: dict[str, Complete], sessions: Sequence[Sequence[str]],
             prefix_lengths: Sequence[int] = (1, 2, 3, 4, 5)) -> dict[str, dict[int, dict[str, float]]]:
    cases = [(s[t - 1], s[t]) for s in sessions for t in range(1, len(s))]
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name, complete in methods.items():
        rows: dict[int, dict[str, float]] = {}
        for n in prefix_lengths:
            rr, top1, lat = [], [], []
            for prev, target in cases:
                if len(target) < n:
                    continue
                t0 = time.perf_counter()
                got = complete(prev, target[:n], 10)
                lat.append(time.perf_counter() - t0)
                rank = got.index(target) + 1 if target in got else 0
                rr.append(1.0 / rank if rank else 0.0)
                top1.append(rank == 1)
            rows[n] = {"cases": float(len(rr)), "mrr_at_10": float(np.mean(rr)) if rr else 0.0,
                       "success_at_1": float(np.mean(top1)) if top1 else 0.0,
                       "p50_ms": float(np.percentile(lat, 50) * 1000) if lat else 0.0,
                       "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else 0.0}
        out[name] = rows
    return out
