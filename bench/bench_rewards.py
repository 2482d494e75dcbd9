"""Durable reward ingest on StreamRewards against a raw SQLAlchemy bulk insert of the same rows.

    python -m bench.bench_rewards [--events 100000] [--batch 1000] [--db URL]

The server runs as `ltrr serve` in its own process on the demo policy (aggregation "first": every
reward is also joined and learned), its join window lengthened to cover the preparation.
Decisions are made first (DecideStream), then every reward is streamed and the clock stops at
the last acknowledgement, which is sent only after the commit.
The ceiling: the same reward rows inserted with SQLAlchemy Core executemany in 5,000-row
transactions into a fresh database with the same schema, in this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import LtrrProcess, save
from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from ltrr_server.config import demo_config_text
from ltrr_server.log import db, schema


async def make_decisions(target: str, n: int) -> list[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        call = decisions_pb2_grpc.DecisionServiceStub(ch).DecideStream()
        ids: list[str] = []

        async def write() -> None:
            for i in range(n):
                await call.write(decide_request("demo", {"user": {"segment": f"s{i % 6}"}}))
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        async for resp in call:
            ids.append(resp.event_id)
        await writer
        return ids


async def stream_rewards(target: str, ids: list[str], batch: int) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = feedback_pb2_grpc.FeedbackServiceStub(ch)
        batches = [feedback_pb2.RewardBatch(events=[reward_event(e, 1.0) for e in ids[i:i + batch]])
                   for i in range(0, len(ids), batch)]

        async def gen():  # type: ignore[no-untyped-def]
            for b in batches:
                yield b

        accepted = 0
        start = time.perf_counter()
        async for acks in stub.StreamRewards(gen()):
            accepted += sum(a.status == feedback_pb2.REWARD_STATUS_ACCEPTED for a in acks.acks)
        return len(ids) / (time.perf_counter() - start), accepted


def raw_bulk_insert(db_url: str, ids: list[str], batch: int = 5000) -> float:
    engine = db.create_engine(db_url)
    db.migrate(engine)
    now = time.time()
    rows = [dict(event_id=e, reward_id="", value=1.0, engaged=None, oracle_best=None, oracle_chosen=None,
                 status="accepted", received_at=now) for e in ids]  # Core executemany takes dicts
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        with engine.begin() as conn:
            conn.execute(schema.rewards.insert(), rows[i:i + batch])
    rate = len(rows) / (time.perf_counter() - start)
    engine.dispose()
    return rate


# The demo policy with a join window long enough for every decision made before the stream.
CONFIG = demo_config_text().replace("join_window_seconds = 30", "join_window_seconds = 3600")


def run(events: int, batch: int, db_url: str | None, ceiling_url: str | None) -> dict[str, Any]:
    server = LtrrProcess(CONFIG, db_url=db_url)
    try:
        t = time.perf_counter()
        ids = asyncio.run(make_decisions(server.target, events))
        decide_rate = len(ids) / (time.perf_counter() - t)
        rate, accepted = asyncio.run(stream_rewards(server.target, ids, batch))
    finally:
        server.stop()
    assert accepted == events, f"only {accepted} of {events} accepted"
    ceiling_url = ceiling_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'raw.db'}"
    ceiling = raw_bulk_insert(ceiling_url, ids)
    return {
        "events": events, "batch": batch, "database": server.db_url.split(":")[0],
        "stream_rewards_per_s": rate, "raw_bulk_insert_rows_per_s": ceiling, "ratio": rate / ceiling,
        "decide_stream_per_s_while_preparing": decide_rate,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--db", help="server database URL (default: a temporary SQLite file)")
    p.add_argument("--ceiling-db", help="database URL for the raw insert (default: a temporary SQLite file)")
    a = p.parse_args()
    name = "rewards" if not a.db else f"rewards_{a.db.split(':')[0]}"
    save(name, run(a.events, a.batch, a.db, a.ceiling_db))
