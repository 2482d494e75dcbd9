"""What tracing costs Decide: the same server off, tracing every call, and tracing 1 in 100.

    python -m bench.bench_tracing [--seconds 5] [--rounds 3]

Three `ltrr serve` processes on the embedded demo's decision policy: ``tracing = "none"`` (the
default); ``"otlp"`` with ``tracing_sample_ratio = 1.0`` (every call: its span, ``decide`` and
``commit``); and ``"otlp"`` at 0.01. Their spans go to an OTLP/gRPC collector in this process
(``tests/otlp.py``). Each round measures unary Decide with 64 calls in flight on one channel to
each; the ratios are over the server without tracing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from bench.bench_tls import CONFIG, rate
from bench.common import LtrrProcess, save
from tests.otlp import Collector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    collector = Collector()
    endpoint = f'tracing_endpoint = "http://127.0.0.1:{collector.port}"'
    servers: list[LtrrProcess] = []
    rounds = []
    try:
        servers.append(LtrrProcess(CONFIG.format(tls=""), metrics=False))
        servers.append(LtrrProcess(CONFIG.format(tls=f'tracing = "otlp"\n{endpoint}'), metrics=False))
        servers.append(LtrrProcess(CONFIG.format(tls=f'tracing = "otlp"\n{endpoint}\ntracing_sample_ratio = 0.01'),
                                   metrics=False))
        off, every, sampled = servers
        for _ in range(args.rounds):
            o = asyncio.run(rate(off.target, args.seconds, None))
            e = asyncio.run(rate(every.target, args.seconds, None))
            s = asyncio.run(rate(sampled.target, args.seconds, None))
            rounds.append({"off": round(o), "every_call": round(e), "one_in_100": round(s),
                           "every_ratio": round(e / o, 2), "sampled_ratio": round(s / o, 2)})
            print(rounds[-1])
    finally:
        for server in servers:
            server.stop()
        collector.stop()
    save("tracing", {"rounds": rounds, "median_every_ratio": statistics.median(r["every_ratio"] for r in rounds),
                     "median_sampled_ratio": statistics.median(r["sampled_ratio"] for r in rounds),
                     "spans_received": len(collector.spans)})


if __name__ == "__main__":
    main()
