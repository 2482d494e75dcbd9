"""Decide (unary, 64 in flight) and DecideStream (one stream, pipelined) against the echo ceiling.

    python -m bench.bench_decide [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc

from bench.common import LtrrProcess, closed_loop, free_port, save, wait_healthy
from ltrr.v1 import decisions_pb2_grpc
from ltrr_client.client import decide_request

REQUEST = decide_request("demo", {"user": {"segment": "s3"}, "time": {"part": "evening"}})


async def unary_rate(target: str, seconds: float, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = decisions_pb2_grpc.DecisionServiceStub(ch)
        return await closed_loop(lambda: stub.Decide(REQUEST), seconds, concurrency)


async def stream_rate(target: str, seconds: float, window: int = 256) -> float:
    """Messages per second on one bidirectional stream, ``window`` requests ahead of the responses."""
    async with grpc.aio.insecure_channel(target) as ch:
        call = decisions_pb2_grpc.DecisionServiceStub(ch).DecideStream()
        credit = asyncio.Semaphore(window)
        done = False

        async def write() -> None:
            while not done:
                await credit.acquire()
                await call.write(REQUEST)
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        received = 0
        start = time.perf_counter()
        warm_until = start + min(1.0, seconds / 5)
        counted_from = None
        while True:
            resp: Any = await call.read()
            credit.release()
            if resp.HasField("error"):
                raise RuntimeError(resp.error)
            now = time.perf_counter()
            if counted_from is None and now >= warm_until:
                counted_from, received = now, 0
            received += 1
            if counted_from is not None and now - counted_from >= seconds:
                break
        done = True
        writer.cancel()
        call.cancel()
        return received / (time.perf_counter() - counted_from)


def run(seconds: float, concurrency: int, rounds: int = 3) -> dict[str, Any]:
    """Echo and ltrr run side by side and are measured in alternation, ``rounds`` times each:
    the machine's drift (it is shared) hits both alike; the medians are reported."""
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(port)])
    ltrr = LtrrProcess()
    echo_target = f"127.0.0.1:{port}"
    rates: dict[str, list[float]] = {k: [] for k in ("echo_unary", "ltrr_unary", "echo_stream", "ltrr_stream")}
    try:
        wait_healthy(echo_target, echo)
        for _ in range(rounds):
            rates["echo_unary"].append(asyncio.run(unary_rate(echo_target, seconds, concurrency)))
            rates["ltrr_unary"].append(asyncio.run(unary_rate(ltrr.target, seconds, concurrency)))
            rates["echo_stream"].append(asyncio.run(stream_rate(echo_target, seconds)))
            rates["ltrr_stream"].append(asyncio.run(stream_rate(ltrr.target, seconds)))
        rss = ltrr.rss_mb()
    finally:
        echo.terminate()
        echo.wait()
        ltrr.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "seconds": seconds, "rounds": rounds, "concurrency": concurrency,
        "echo_unary_per_s": med["echo_unary"], "decide_unary_per_s": med["ltrr_unary"],
        "unary_ratio": med["ltrr_unary"] / med["echo_unary"],
        "echo_stream_per_s": med["echo_stream"], "decide_stream_per_s": med["ltrr_stream"],
        "stream_ratio": med["ltrr_stream"] / med["echo_stream"],
        "per_round": {k: [round(x) for x in v] for k, v in rates.items()},
        "server_rss_mb_after": rss,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    save("decide", run(a.seconds, a.concurrency, a.rounds))
