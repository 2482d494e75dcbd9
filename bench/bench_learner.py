"""The learner against a bare vowpal-wabbit-next learn loop on the same events, and its lag at 5k/s.

    python -m bench.bench_learner [--events 50000] [--rate 5000] [--seconds 10]

Throughput: the same joined events (demo policy: 4 actions, -q uA -q utA) learned by (a) a bare
loop of TextFormatParser.parse_line + Workspace.learn_one on prebuilt text lines, (b) ltrr's
Learner: events pickled in batches of 1,000 to the learner process, labelled and learned there,
model copies published back. The clock stops when the published count reaches every event.
Lag: events fed at a steady rate in batches of 50 (as reward batches arrive), with the server's
default publish interval (0.25 s); the lag of a publish is the time from the oldest event in it
being joined to the copy being loaded for the decision path in the server process.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import vowpal_wabbit_next as vw
from prometheus_client import CollectorRegistry

from bench.common import save
from ltrr_server.config import load_settings
from ltrr_server.features import action_line, shared_line
from ltrr_server.learner.learner import Learner, LearnerState
from ltrr_server.log import db
from ltrr_server.log.joiner import JoinedEvent
from ltrr_server.log.writer import EventLogWriter
from ltrr_server.metrics import Metrics
from ltrr_server.policy.model import PolicyModel

SPEC = load_settings(env={}).policies[0]
ACTIONS = [action_line(a.id, a.features) for a in SPEC.actions]


def events(n: int, seed: int = 3) -> list[JoinedEvent]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ctx = [("user", [("segment", f"s{rng.randrange(6)}")]), ("time", [("part", rng.choice(["am", "pm"]))])]
        out.append(JoinedEvent(
            seq=i + 1, event_id=str(i), policy=SPEC.name, lineage=1, shared=shared_line(ctx), actions=ACTIONS,
            action_ids=[a.id for a in SPEC.actions], chosen=[(rng.randrange(4), 0.25)], explored=False,
            reward=float(rng.random() < 0.3), n_rewards=1, source="reward", oracle_best=None,
            oracle_chosen=None, joined_at=time.time(),
        ))
    return out


def bare_loop(evs: list[JoinedEvent]) -> float:
    ws = vw.Workspace(SPEC.vw_args())
    parser = vw.TextFormatParser(ws)
    # Text prepared outside the clock: the bare loop is parse + learn only.
    texts = []
    for ev in evs:
        idx, prob = ev.chosen[0]
        lines = [ev.shared] + [f"0:{-ev.reward}:{prob} {a}" if i == idx else a for i, a in enumerate(ev.actions)]
        texts.append(lines)
    start = time.perf_counter()
    for lines in texts:
        ws.learn_one([parser.parse_line(line) for line in lines])
    return len(evs) / (time.perf_counter() - start)


def make_learner(publish: Any, interval: float) -> tuple[Learner, EventLogWriter]:
    engine = db.create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'l.db'}")
    db.migrate(engine)
    metrics = Metrics(CollectorRegistry())
    writer = EventLogWriter(engine, metrics, 1_000_000)
    writer.start()
    learner = Learner(writer, metrics, publish, interval, 3600, lambda _: 0)
    learner.set_state(LearnerState(SPEC.name, 1, PolicyModel.create(SPEC), 0, 0))
    learner.drain_before_start()
    learner.start()
    return learner, writer


def learner_throughput(evs: list[JoinedEvent]) -> float:
    learner, writer = make_learner(lambda *a: None, 0.01)
    time.sleep(1.0)  # the process has started and loaded its model
    start = time.perf_counter()
    for i in range(0, len(evs), 1000):
        learner.put_many(evs[i:i + 1000])
    while learner.learned.get(SPEC.name, 0) < len(evs):
        time.sleep(0.001)
    rate = len(evs) / (time.perf_counter() - start)
    learner.stop()
    writer.close()
    return rate


def lag_at_rate(rate: int, seconds: float) -> dict[str, float]:
    lags: list[float] = []
    learner, writer = make_learner(lambda policy, lineage, model, version, lag: lags.append(lag), 0.25)
    time.sleep(1.0)
    lags.clear()
    evs = events(int(rate * seconds), seed=5)
    start = time.perf_counter()
    for i in range(0, len(evs), 50):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        learner.put_many([replace(ev, joined_at=now) for ev in evs[i:i + 50]])
    time.sleep(0.6)
    learner.stop()
    writer.close()
    lags.sort()
    return {"publishes": len(lags), "lag_p50_s": lags[len(lags) // 2], "lag_p99_s": lags[int(len(lags) * 0.99)],
            "lag_max_s": lags[-1]}


def run(n: int, rate: int, seconds: float) -> dict[str, Any]:
    evs = events(n)
    bare = bare_loop(evs)
    ours = learner_throughput(evs)
    return {"events": n, "bare_vw_learn_per_s": bare, "learner_per_s": ours, "ratio": ours / bare,
            "feed_rate_per_s": rate, **lag_at_rate(rate, seconds)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    save("learner", run(a.events, a.rate, a.seconds))
