"""Retrieval simulation: the music world's queries through a running server's Retrieve.

Every query goes to the learned policy and, through the same server with a fixed plan, to
baselines: every strategy at its largest budget, a uniform random plan, and (on every
``singles_every``-th query) each single strategy at each of its budgets. The simulated user
engages with the query's target item when it is among the candidates; every arm's reward
event says so, and carries the best reward any arm got on that query as the oracle value.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ltrr.v1 import feedback_pb2, retrieval_pb2
from ltrr_client.client import AsyncLtrrClient
from ltrr_client.simulate import send_rewards
from ltrr_server.demo.music import MusicWorld
from ltrr_server.simulation.means import Means

# The embedded demo configuration's ladders.
DEMO_LADDERS: dict[str, tuple[int, ...]] = {
    "lexical": (0, 10, 50, 200), "vector": (0, 10, 50, 200), "memory": (0, 10, 50), "explore": (0, 10, 20),
}
LEARNED, ALL, RANDOM = "learned", "all-largest", "random"


def parse_ladders(text: str) -> dict[str, tuple[int, ...]]:
    """``"lexical=0,10,50 memory=0,10"`` as a mapping.

    >>> parse_ladders("lexical=0,10 memory=0,5")
    {'lexical': (0, 10), 'memory': (0, 5)}
    """
    out = {}
    for part in text.split():
        name, _, budgets = part.partition("=")
        out[name] = tuple(int(b) for b in budgets.split(","))
    return out


@dataclass
class RetrievalSimulation:
    rows: list[dict[str, dict[str, float]]] = field(default_factory=list)
    tail: dict[str, dict[str, float]] = field(default_factory=dict)
    best_single: str = ""
    learned_plans_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    # The run's parameters, for the plot's title.
    params: dict[str, object] = field(default_factory=dict)

    def checks(self) -> dict[str, bool]:
        """The issue's bar: recall within 2 points of all-largest at no more than half its candidates,
        and a mean reward above the best single strategy's and the random plans'."""
        t = self.tail
        if LEARNED not in t or ALL not in t:
            return {}
        out = {
            "recall within 2 points of all-largest": t[LEARNED]["recall"] >= t[ALL]["recall"] - 0.02,
            "at most half the candidates of all-largest": t[LEARNED]["candidates"] <= 0.5 * t[ALL]["candidates"],
            "reward above uniform random plans": t[LEARNED]["reward"] > t[RANDOM]["reward"],
        }
        if self.best_single:
            out[f"reward above the best single strategy ({self.best_single})"] = (
                t[LEARNED]["reward"] > t[self.best_single]["reward"])
        return out


def _singles(ladders: Mapping[str, Sequence[int]]) -> list[str]:
    return [f"{s}:{b}" for s, bs in ladders.items() for b in bs if b > 0]


def _plan(arm: str, ladders: Mapping[str, Sequence[int]], rng: random.Random) -> dict[str, int]:
    if arm == ALL:
        return {s: max(bs) for s, bs in ladders.items()}
    if arm == RANDOM:
        while True:
            plan = {s: rng.choice(list(bs)) for s, bs in ladders.items()}
            if any(plan.values()):
                return plan
    name, _, budget = arm.partition(":")
    return {name: int(budget)}


async def run_retrieval_simulation(
    target: str, policy: str = "retrieval", queries: int = 20_000, report_every: int = 1000,
    concurrency: int = 16, n_items: int = 100_000, world_seed: int = 42, seed: int = 1,
    ladders: Mapping[str, Sequence[int]] | None = None, cost: float = 0.0002, singles_every: int = 4,
    tail: int = 5000, out: TextIO | None = sys.stdout,
) -> RetrievalSimulation:
    """Drives ``queries`` queries; returns per-window and final (last ``tail`` queries) figures per arm."""
    ladders = dict(ladders or DEMO_LADDERS)
    singles = _singles(ladders)
    world = MusicWorld(n_items=n_items, seed=world_seed)
    rng = random.Random(seed)
    sim = RetrievalSimulation(params={"queries": queries, "items": n_items, "cost": cost, "seed": seed,
                                      "world_seed": world_seed})
    windows: dict[str, Means] = {}
    tails: dict[str, Means] = {}
    started = time.perf_counter()
    if out:
        print(f"{'queries':>8} | {'learned reward/recall/cands':>28} | {'all-largest':>20} | {'random':>20} | "
              f"{'best single':>28} | learned regret", file=out)
    async with AsyncLtrrClient(target, timeout=60) as client:
        done = 0
        while done < queries:
            n = min(concurrency, queries - done)
            batch = [world.query(rng) for _ in range(n)]
            arms_per_query = [[LEARNED, ALL, RANDOM] + (singles if (done + i) % singles_every == 0 else [])
                              for i in range(n)]
            calls = []
            for q, arms in zip(batch, arms_per_query, strict=True):
                for arm in arms:
                    req = retrieval_pb2.RetrieveRequest(policy=policy, query=q.text,
                                                        query_embedding=q.embedding or [])
                    if arm != LEARNED:
                        req.fixed_plan.update(_plan(arm, ladders, rng))
                    calls.append(client.retrieval.Retrieve(req))
            responses = iter(await asyncio.gather(*calls))
            events = []
            for i, (q, arms) in enumerate(zip(batch, arms_per_query, strict=True)):
                got = []
                for arm in arms:
                    resp = next(responses)
                    found = any(c.item_id == q.target for c in resp.candidates)
                    drawn = sum(s.returned for s in resp.strategies)
                    got.append((arm, resp, found, drawn, (1.0 if found else 0.0) - cost * drawn))
                best = max(r for *_, r in got)
                in_tail = done + i >= queries - tail
                for arm, resp, found, drawn, reward in got:
                    figures = {"recall": float(found), "candidates": float(drawn), "reward": reward,
                               "regret": best - reward}
                    windows.setdefault(arm, Means("queries")).add(**figures)
                    if in_tail:
                        tails.setdefault(arm, Means("queries")).add(**figures)
                        if arm == LEARNED:
                            kinds = sim.learned_plans_by_kind.setdefault(q.kind, {})
                            kinds[resp.plan] = kinds.get(resp.plan, 0) + 1
                    events.append(feedback_pb2.RewardEvent(
                        event_id=resp.event_id, value=reward, engaged_item_ids=[q.target] if found else [],
                        oracle_best_value=best, oracle_chosen_value=reward,
                    ))
            await send_rewards(client, events)
            done += n
            if done % report_every < n or done == queries:
                row = {arm: w.summary() for arm, w in windows.items()}
                sim.rows.append(row | {"_": {"queries": float(done)}})
                if out:
                    print(_row_text(done, row, singles), file=out)
                windows = {}
    sim.tail = {arm: w.summary() for arm, w in tails.items()}
    single_tails = [a for a in singles if a in sim.tail]
    sim.best_single = max(single_tails, key=lambda a: sim.tail[a]["reward"]) if single_tails else ""
    if out:
        print(f"\nlast {min(tail, queries)} queries ({queries / (time.perf_counter() - started):.0f} queries/s, "
              f"{len(singles) // singles_every + 3} Retrieve calls per query on average):", file=out)
        for arm in [LEARNED, ALL, RANDOM, sim.best_single]:
            if arm in sim.tail:
                t = sim.tail[arm]
                print(f"  {arm:<16} reward {t['reward']:.3f}  recall {t['recall']:.3f}  "
                      f"candidates {t['candidates']:.1f}  regret {t['regret']:.3f}", file=out)
        for kind, plans in sorted(sim.learned_plans_by_kind.items()):
            top = sorted(plans.items(), key=lambda kv: -kv[1])[:3]
            total = sum(plans.values())
            print(f"  learned plans for {kind} queries: " +
                  ", ".join(f"{p} {c / total:.0%}" for p, c in top), file=out)
        for check, ok in sim.checks().items():
            print(f"  [{'x' if ok else ' '}] {check}", file=out)
    return sim


def _row_text(done: int, row: dict[str, dict[str, float]], singles: list[str]) -> str:
    def fmt(arm: str) -> str:
        s = row.get(arm)
        return f"{s['reward']:.3f}/{s['recall']:.3f}/{s['candidates']:.0f}" if s else "-"
    best = max((a for a in singles if a in row), key=lambda a: row[a]["reward"], default="")
    return (f"{done:>8} | {fmt(LEARNED):>28} | {fmt(ALL):>20} | {fmt(RANDOM):>20} | "
            f"{(best + ' ' + fmt(best)) if best else '-':>28} | {row[LEARNED]['regret']:.3f}")


def plot(sim: RetrievalSimulation, path: str) -> None:
    """Reward, recall and candidates over time per arm, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["_"]["queries"] for r in sim.rows]
    arms = [LEARNED, ALL, RANDOM] + ([sim.best_single] if sim.best_single else [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, key, title, unit in zip(axes, ("reward", "recall", "candidates"),
                                    ("mean reward", "union recall of the engaged item", "candidates drawn per query"),
                                    ("reward per query, per window", "share of queries", "candidates"),
                                    strict=True):
        for arm in arms:
            ys = [r[arm][key] if arm in r else float("nan") for r in sim.rows]
            ax.plot(xs, ys, label=arm, marker="." if arm == sim.best_single else None)
        ax.set_title(title)
        ax.set_xlabel("queries")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    axes[0].legend()
    p = sim.params
    if p:
        fig.suptitle(f"ltrr simulate --mode retrieval: {p['queries']} queries, {p['items']} items, cost per "
                     f"candidate {p['cost']}, seed {p['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

