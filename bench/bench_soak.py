"""Soak: decisions and rewards for a long time while clients misbehave; RSS must stay flat and every
acknowledged reward must be in the database.

    python -m bench.bench_soak [--minutes 30] [--demo] [--parts steady,giving_up,slow_reader,record_flood]

Against `ltrr serve` in a child process (the embedded demo with --demo: catalog, indexes and the
autocomplete model; else one demo policy), at once:

- steady clients: Decide then ReportReward, each acknowledged reward remembered;
- callers that give up: rewards with 1-10 ms deadlines, decisions cancelled mid-flight;
- slow readers: DecideStream and StreamRewards calls that read a few answers slowly, then leave;
- a RecordQuery flood: random session ids, queries of up to limits.max_query_chars characters.

RSS is sampled every 10 s; the figure is the change from the end of the warm-up (the first fifth of
the run, by which the sessions have reached their bound) to the end, against the 10% allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from typing import Any

import grpc

from bench.common import LtrrProcess, save
from ltrr.v1 import (
    decisions_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from ltrr_client.client import decide_request, reward_event

POLICY_CONFIG = """
[[policies]]
name = "demo"
epsilon = 0.1
join_window_seconds = 30
[[policies.actions]]
id = "news"
[[policies.actions]]
id = "sports"
[[policies.actions]]
id = "music"
"""


# The kinds of clients, and how many of each run at once.
PARTS = {"steady": 4, "giving_up": 2, "slow_reader": 1, "record_flood": 2}


class Soak:
    def __init__(self, target: str, seconds: float, parts: tuple[str, ...] = PARTS) -> None:
        self.target = target
        self.parts = parts
        self.until = time.monotonic() + seconds
        self.acked: list[str] = []
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def running(self) -> bool:
        return time.monotonic() < self.until

    async def steady(self, ch: grpc.aio.Channel) -> None:
        dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
        rng = random.Random()
        while self.running():
            try:
                d = await dec.Decide(decide_request("demo", {"user": {"segment": f"s{rng.randrange(20)}"}}), timeout=5)
                ack = await fb.ReportReward(reward_event(d.event_id, float(rng.random() < 0.3)), timeout=5)
                if ack.status == feedback_pb2.REWARD_STATUS_ACCEPTED:
                    self.acked.append(d.event_id)
                self.count("steady")
            except grpc.aio.AioRpcError as err:
                self.count(f"steady {err.code().name}")
                await asyncio.sleep(0.05)

    async def giving_up(self, ch: grpc.aio.Channel) -> None:
        dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
        rng = random.Random()
        while self.running():
            try:
                d = await dec.Decide(decide_request("demo"), timeout=5)
                await fb.ReportReward(reward_event(d.event_id, 1.0), timeout=rng.uniform(0.001, 0.01))
            except grpc.aio.AioRpcError:
                pass
            call = dec.Decide(decide_request("demo"))
            await asyncio.sleep(rng.uniform(0, 0.003))
            call.cancel()
            self.count("gave up")

    async def slow_reader(self, ch: grpc.aio.Channel) -> None:
        dec, fb = decisions_pb2_grpc.DecisionServiceStub(ch), feedback_pb2_grpc.FeedbackServiceStub(ch)
        while self.running():
            stream = dec.DecideStream(iter([decide_request("demo")] * 2000))
            try:
                for _ in range(3):
                    await stream.read()
                    await asyncio.sleep(0.5)
            except grpc.aio.AioRpcError:
                pass
            stream.cancel()
            d = await dec.Decide(decide_request("demo"), timeout=5)
            batches = [feedback_pb2.RewardBatch(events=[reward_event(d.event_id, 1.0, reward_id=str(i))])
                       for i in range(200)]
            acks = fb.StreamRewards(iter(batches))
            try:
                await acks.read()
                await asyncio.sleep(1.0)
            except grpc.aio.AioRpcError:
                pass
            acks.cancel()
            self.count("slow reader")

    async def record_flood(self, ch: grpc.aio.Channel) -> None:
        models = models_pb2_grpc.ModelServiceStub(ch)
        rng = random.Random()
        while self.running():
            query = " ".join(rng.choice(["jazz", "piano", "rock", "lofi", "beats"]) for _ in range(100))[:512]
            try:
                await models.RecordQuery(models_pb2.RecordQueryRequest(
                    session_id=f"s{rng.randrange(1_000_000)}", query=query), timeout=5)
                self.count("record")
            except grpc.aio.AioRpcError as err:
                self.count(f"record {err.code().name}")

    async def run(self, server: LtrrProcess) -> list[tuple[float, float]]:
        samples: list[tuple[float, float]] = []
        start = time.monotonic()

        async def sample() -> None:
            while self.running():
                samples.append((time.monotonic() - start, server.rss_mb()))
                print(f"{samples[-1][0]:6.0f}s  RSS {samples[-1][1]:6.1f} MB  acked {len(self.acked)}  "
                      f"{dict(sorted(self.counts.items()))}", flush=True)
                await asyncio.sleep(10)

        async with grpc.aio.insecure_channel(self.target) as ch:
            clients = [getattr(self, part)(ch) for part in self.parts for _ in range(PARTS[part])]
            await asyncio.gather(sample(), *clients)
        return samples


def run(minutes: float, demo: bool, parts: tuple[str, ...] = tuple(PARTS)) -> dict[str, Any]:
    server = LtrrProcess(config=None if demo else POLICY_CONFIG)
    try:
        soak = Soak(server.target, minutes * 60, parts)
        samples = asyncio.run(soak.run(server))
        time.sleep(1.0)
        db = sqlite3.connect(str(server.dir / "ltrr.db") if server.db_url.startswith("sqlite") else ":memory:")
        stored = {r[0] for r in db.execute("SELECT event_id FROM rewards")}
        db.close()
    finally:
        server.stop()
    warm = [rss for t, rss in samples if t >= minutes * 60 / 5]
    start_rss, end_rss = warm[0], warm[-1]
    lost = [e for e in soak.acked if e not in stored]
    out = {
        "minutes": minutes, "demo": demo, "parts": list(parts), "acked": len(soak.acked), "acked_lost": len(lost),
        "rss_after_warm_up_mb": round(start_rss, 1), "rss_end_mb": round(end_rss, 1),
        "rss_max_mb": round(max(rss for _, rss in samples), 1),
        "rss_change": round(end_rss / start_rss - 1, 4), "counts": soak.counts, "samples": samples,
    }
    print(f"acked {len(soak.acked)}, lost {len(lost)}; RSS {start_rss:.0f} -> {end_rss:.0f} MB "
          f"({out['rss_change']:+.1%}, allowed ±10%), max {out['rss_max_mb']} MB")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--demo", action="store_true", help="the embedded demo (catalog, indexes, autocomplete)")
    p.add_argument("--parts", default=",".join(PARTS), help="the kinds of clients (default: all of them)")
    a = p.parse_args()
    parts = tuple(a.parts.split(","))
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; known: {','.join(PARTS)}")
    save("soak" if parts == tuple(PARTS) else "soak-" + "-".join(parts), run(a.minutes, a.demo, parts))


if __name__ == "__main__":
    main()
