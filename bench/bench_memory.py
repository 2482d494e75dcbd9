"""Server memory: RSS of the demo server idle, and over a steady load (flat within 10%?).

    python -m bench.bench_memory [--minutes 10] [--rate 1000]
    python -m bench.bench_memory --startup

``--startup``: RSS of `ltrr serve` on the embedded demo (catalog, indexes, autocomplete model)
5 s after it is healthy, on a first start in a fresh directory and on the restart after it.

`ltrr serve` on the demo config (a temporary SQLite file) with a steady load of Decide calls at
``--rate`` per second, each rewarded half a second later (in batches on one StreamRewards), so
decisions, pending joins, commits and learning all run. RSS (the server, and its learner and writer processes) is
sampled every 10 s; the first two minutes are warm-up (pending joins and the memory of recent
joins fill up to their bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import grpc

from bench.common import LtrrProcess, rss_mb, save
from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().split(")")[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError):
                pass
    return out


async def load(target: str, rate: int, seconds: float, sample: Any) -> int:
    async with grpc.aio.insecure_channel(target) as ch:
        dec = decisions_pb2_grpc.DecisionServiceStub(ch)
        to_reward: deque[tuple[float, str]] = deque()
        queue: asyncio.Queue[feedback_pb2.RewardBatch | None] = asyncio.Queue(100)

        async def batches():  # type: ignore[no-untyped-def]
            while (b := await queue.get()) is not None:
                yield b

        stream = feedback_pb2_grpc.FeedbackServiceStub(ch).StreamRewards(batches())

        async def drain() -> None:
            async for _ in stream:
                pass

        drainer = asyncio.ensure_future(drain())
        start = time.perf_counter()
        n = 0
        next_sample = start
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate) - n
            if due > 0:
                resps = await asyncio.gather(*(dec.Decide(decide_request(
                    "demo", {"user": {"segment": f"s{(n + i) % 6}"}})) for i in range(min(due, 200))))
                n += len(resps)
                to_reward.extend((now, r.event_id) for r in resps)
            ready = []
            while to_reward and to_reward[0][0] < now - 0.5:
                ready.append(reward_event(to_reward.popleft()[1], float(n % 3 == 0)))
            if ready:
                await queue.put(feedback_pb2.RewardBatch(events=ready))
            if now >= next_sample:
                sample(now - start)
                next_sample += 10
            await asyncio.sleep(0.01)
        await queue.put(None)
        await drainer
        return n


def run(minutes: float, rate: int) -> dict[str, Any]:
    server = LtrrProcess()
    try:
        time.sleep(1.5)
        idle = server.rss_mb()
        # The learner and the writer process (and multiprocessing's resource tracker).
        child_pids = children(server.proc.pid)
        samples: list[dict[str, float]] = []

        def sample(t: float) -> None:
            samples.append({"t": round(t), "server_mb": round(server.rss_mb(), 1),
                            "children_mb": round(sum(rss_mb(p) for p in child_pids), 1)})
            print(samples[-1], flush=True)

        n = asyncio.run(load(server.target, rate, minutes * 60, sample))
    finally:
        server.stop()
    # Warm-up: the recent-joins memory (limits.max_recent_joins, 50k) fills in 50 s at 1k/s.
    steady = [s["server_mb"] for s in samples if s["t"] >= 120] or [s["server_mb"] for s in samples]
    half = max(1, len(steady) // 2)
    first, second = sum(steady[:half]) / half, sum(steady[half:]) / max(1, len(steady) - half)
    return {
        "minutes": minutes, "rate_per_s": rate, "decisions": n, "idle_server_rss_mb": idle,
        "idle_children_rss_mb": samples[0]["children_mb"] if samples else 0.0,
        "steady_min_mb": min(steady), "steady_max_mb": max(steady),
        # Drift: mean of the second half of the steady samples against the first half's.
        "steady_drift": second / first - 1, "steady_range": max(steady) / min(steady) - 1, "samples": samples,
    }


def startup(settle: float = 5.0) -> dict[str, Any]:
    """The demo server's RSS after a first start (it trains and ingests) and after a restart."""
    out: dict[str, Any] = {}
    directory = Path(tempfile.mkdtemp(prefix="ltrr-bench-startup-"))
    for label in ("first_start", "restart"):
        t0 = time.perf_counter()
        server = LtrrProcess(directory=directory)
        healthy = time.perf_counter() - t0
        try:
            time.sleep(settle)
            out[label] = {"healthy_after_s": round(healthy, 1), "server_mb": round(server.rss_mb(), 1),
                          "children_mb": [round(rss_mb(p), 1) for p in children(server.proc.pid)]}
            print(label, out[label], flush=True)
        finally:
            server.stop()
    shutil.rmtree(directory, ignore_errors=True)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--startup", action="store_true", help="RSS after a first start and a restart, no load")
    a = p.parse_args()
    if a.startup:
        save("memory_startup", startup())
    else:
        save("memory", run(a.minutes, a.rate))
