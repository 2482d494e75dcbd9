"""Synthetic traffic for a running ltrr: contexts whose best action the simulator knows.

The world: a user segment and a part of day; each (segment, part, action) has a click rate,
and exactly one action per (segment, part) is clearly best. The learned policy is driven
through the real server (Decide, then StreamRewards carrying oracle values); a uniform-random
baseline sees the same contexts and the same click rates, client-side.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ltrr.v1 import admin_pb2, feedback_pb2
from ltrr_client.client import AsyncLtrrClient, decide_request, reward_event

PARTS = ("morning", "evening")


@dataclass(frozen=True)
class World:
    """Click rates by (segment, part of day, action index)."""

    n_segments: int
    n_actions: int
    best_rate: float = 0.5
    seed: int = 7

    def rate(self, segment: int, part: int, action: int) -> float:
        if action == self.best_action(segment, part):
            return self.best_rate
        return 0.05 + 0.05 * ((segment * 7 + part * 3 + action) % 3)

    def best_action(self, segment: int, part: int) -> int:
        return (segment + 2 * part) % self.n_actions

    def context(self, rng: random.Random) -> tuple[int, int]:
        return rng.randrange(self.n_segments), rng.randrange(len(PARTS))


@dataclass
class Window:
    events: int = 0
    reward: float = 0.0
    regret: float = 0.0

    def add(self, reward: float, regret: float) -> None:
        self.events += 1
        self.reward += reward
        self.regret += regret


@dataclass
class SimulationResult:
    rows: list[dict[str, float]] = field(default_factory=list)
    policy_tail_regret: float = 0.0
    uniform_tail_regret: float = 0.0
    # The run's parameters, for the plot's title.
    params: dict[str, object] = field(default_factory=dict)

    @property
    def regret_ratio(self) -> float:
        return self.policy_tail_regret / self.uniform_tail_regret if self.uniform_tail_regret else 0.0


async def run_simulation(
    target: str, policy: str = "demo", events: int = 20_000, report_every: int = 1000, concurrency: int = 64,
    segments: int = 6, tail: int = 5000, seed: int = 1, out: TextIO | None = sys.stdout,
) -> SimulationResult:
    """Drives ``events`` decisions and rewards; returns per-window reward and regret for both arms."""
    rng = random.Random(seed)
    tail = min(tail, events)
    result = SimulationResult(params={"policy": policy, "events": events, "segments": segments, "seed": seed,
                                      "tail": tail})
    async with AsyncLtrrClient(target, timeout=30) as client:
        info = await client.admin.GetPolicy(admin_pb2.GetPolicyRequest(name=policy))
        action_ids = [a.id for a in info.spec.actions]
        if not action_ids:
            raise SystemExit(f"policy {policy!r} has no configured actions to simulate")
        world = World(segments, len(action_ids), seed=seed)
        index = {a: i for i, a in enumerate(action_ids)}
        learned, uniform = Window(), Window()
        tail_learned, tail_uniform = Window(), Window()
        started = time.perf_counter()
        if out:
            print(f"{'events':>8} {'policy reward':>14} {'uniform reward':>15} {'policy regret':>14} "
                  f"{'uniform regret':>15} {'ratio':>6}", file=out)
        done = 0
        while done < events:
            n = min(concurrency, events - done)
            ctxs = [world.context(rng) for _ in range(n)]
            reqs = [decide_request(policy, {"user": {"segment": f"s{s}"}, "time": {"part": PARTS[p]}})
                    for s, p in ctxs]
            resps = await asyncio.gather(*(client.decisions.Decide(r) for r in reqs))
            batch = []
            for (s, p), resp in zip(ctxs, resps, strict=True):
                a = index[resp.chosen_action_id]
                rates = [world.rate(s, p, i) for i in range(len(action_ids))]
                best = max(rates)
                click = 1.0 if rng.random() < rates[a] else 0.0
                batch.append(reward_event(resp.event_id, click, oracle_best=best, oracle_chosen=rates[a]))
                u = rng.randrange(len(action_ids))
                u_click = 1.0 if rng.random() < rates[u] else 0.0
                learned.add(click, best - rates[a])
                uniform.add(u_click, best - rates[u])
                if done + len(batch) > events - tail:
                    tail_learned.add(click, best - rates[a])
                    tail_uniform.add(u_click, best - rates[u])
            await send_rewards(client, batch)
            done += n
            if done % report_every < n or done == events:
                row = {
                    "events": float(done),
                    "policy_reward": learned.reward / max(learned.events, 1),
                    "uniform_reward": uniform.reward / max(uniform.events, 1),
                    "policy_regret": learned.regret / max(learned.events, 1),
                    "uniform_regret": uniform.regret / max(uniform.events, 1),
                }
                result.rows.append(row)
                if out:
                    ratio = row["policy_regret"] / row["uniform_regret"] if row["uniform_regret"] else 0.0
                    print(f"{done:>8} {row['policy_reward']:>14.3f} {row['uniform_reward']:>15.3f} "
                          f"{row['policy_regret']:>14.3f} {row['uniform_regret']:>15.3f} {ratio:>6.2f}", file=out)
                learned, uniform = Window(), Window()
        result.policy_tail_regret = tail_learned.regret / max(tail_learned.events, 1)
        result.uniform_tail_regret = tail_uniform.regret / max(tail_uniform.events, 1)
        if out:
            rate = events / (time.perf_counter() - started)
            print(f"last {tail} events: mean true regret {result.policy_tail_regret:.4f} (policy) vs "
                  f"{result.uniform_tail_regret:.4f} (uniform random): ratio {result.regret_ratio:.2f}; "
                  f"{rate:.0f} events/s", file=out)
    return result


async def send_rewards(client: AsyncLtrrClient, events: Sequence[feedback_pb2.RewardEvent],
                       batch_size: int = 1000) -> None:
    """Sends rewards on one stream, ``batch_size`` a batch; raises unless every one is accepted."""
    async def batches() -> AsyncIterator[feedback_pb2.RewardBatch]:
        for i in range(0, len(events), batch_size):
            yield feedback_pb2.RewardBatch(events=list(events[i:i + batch_size]))

    async for ack_batch in client.feedback.StreamRewards(batches()):
        bad = [a for a in ack_batch.acks if a.status != feedback_pb2.REWARD_STATUS_ACCEPTED]
        if bad:
            raise RuntimeError(f"reward not accepted: {bad[0]}")


def plot(result: SimulationResult, path: str) -> None:
    """Writes a PNG of windowed true regret and reward, policy beside uniform random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["events"] for r in result.rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(xs, [r["policy_regret"] for r in result.rows], label="ltrr policy")
    ax1.plot(xs, [r["uniform_regret"] for r in result.rows], label="uniform random")
    ax1.set(title="true regret per event (windowed)", xlabel="events", ylabel="regret")
    ax2.plot(xs, [r["policy_reward"] for r in result.rows], label="ltrr policy")
    ax2.plot(xs, [r["uniform_reward"] for r in result.rows], label="uniform random")
    ax2.set(title="mean reward (windowed)", xlabel="events", ylabel="click rate")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    p = result.params
    if p:
        fig.suptitle(f"ltrr simulate: policy {p['policy']}, {p['events']} events, {p['segments']} segments, "
                     f"seed {p['seed']}; last {p['tail']}: regret {result.regret_ratio:.0%} of uniform's")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
