"""Search simulation: the music world's queries through a running server's Search, with a click model.

Users examine position k of a page with probability ``1 / k ** eta`` (the position-based click
model; the server does not know ``eta``) and engage with an examined item by its graded
relevance, which only the simulator knows (``grades``). Every query runs through the same
server as several arms:

- ``learned``: Search as a frontend calls it: the policy's plan, the online ranker's page;
- ``ranker@all``: Search with every strategy at its largest budget, the ranker's page;
- ``fusion@all``: reciprocal rank fusion of that same union (Retrieve's order);
- ``popularity@all``: that union by the catalog's popularity;
- ``oracle@all``: that union by true relevance (the best any ranker could do on it);
- ``model:NAME@all``, for each trained ranker in ``models``: that union by its live version
  (``ltrr train ranker``; for example one trained with ``--no-debias``, on raw clicks).

Each arm's page is engaged with by the same click model; the learned arms' clicks come back as
rewards naming the engaged items (the baselines' too, as Search's rewards: memory and users learn
from every page). Reported per window and over the last ``tail`` queries: NDCG@10 by true
relevance (ideal: the union's best order), MRR of the query's target, clicks per page, recall
of the target on the page and candidates drawn.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ltrr.v1 import feedback_pb2, retrieval_pb2
from ltrr_client.client import AsyncLtrrClient
from ltrr_client.simulate import send_rewards
from ltrr_server.demo.music import EPOCH, NEW_DAYS, MusicWorld, WorldQuery
from ltrr_server.simulation.means import Means
from ltrr_server.simulation.retrieval import DEMO_LADDERS

LEARNED, RANKER_ALL, FUSION_ALL, POPULARITY_ALL, ORACLE_ALL = (
    "learned", "ranker@all", "fusion@all", "popularity@all", "oracle@all")
ARMS = (LEARNED, RANKER_ALL, FUSION_ALL, POPULARITY_ALL, ORACLE_ALL)
# The chance that an examined item is engaged with, by its grade.
ENGAGE = (0.03, 0.25, 0.6, 0.95)
_DAY = 86400.0


def grades(world: MusicWorld, q: WorldQuery, item_ids: Sequence[str]) -> list[int]:
    """True relevance, 0-3, of items to a query: its target 3; for a mood query, items of the
    target's genre and mood 1, or 2 close to the query's intent; for a new-releases query, the
    genre's other new items 2; for a name, the same artist's other items 1 (2 for an artist's
    own items); for a head query (a playlist's words), playlists sharing its activity word 1."""
    target = world.items[world.index[q.target]]
    qvec = np.asarray(q.embedding, dtype=np.float32) if q.embedding is not None else None
    words = set(q.text.split())
    out = []
    for item_id in item_ids:
        i = world.index.get(item_id)
        if i is None:
            out.append(0)
            continue
        it = world.items[i]
        if item_id == q.target:
            g = 3
        elif q.kind == "mood":
            g = 0
            if it["genre"] == target["genre"] and it["mood"] == target["mood"]:
                g = 2 if qvec is not None and float(world.embeddings[i] @ qvec) >= 0.9 else 1
        elif q.kind == "new":
            g = 2 if it["genre"] == q.genre and world_age_days(it) < NEW_DAYS else 0
        elif q.kind == "entity":
            g = 0
            if target["artist"] and it["artist"] == target["artist"]:
                g = 2 if target["type"] == "artist" else 1
        else:
            g = 1 if it["type"] == "playlist" and words & set(it["title"].split()) else 0
        out.append(g)
    return out


def world_age_days(item: dict[str, Any]) -> float:
    return float((EPOCH - item["created_at"]) / _DAY)


def dcg(gains: Sequence[int], k: int = 10) -> float:
    """Discounted cumulative gain of the first ``k`` grades.

    >>> round(dcg([3, 0, 1]), 3)
    7.5
    """
    return float(sum((2 ** g - 1) / math.log2(r + 2) for r, g in enumerate(gains[:k])))


def clicks(gains: Sequence[int], eta: float, rng: random.Random) -> list[int]:
    """Positions (from 0) the simulated user engages with: examined with 1/(k+1)^eta, then by grade."""
    return [k for k, g in enumerate(gains) if rng.random() < 1.0 / (k + 1) ** eta and rng.random() < ENGAGE[g]]


@dataclass
class SearchSimulation:
    rows: list[dict[str, dict[str, float]]] = field(default_factory=list)
    tail: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    examination: list[float] = field(default_factory=list)

    def gap_closed(self, arm: str = RANKER_ALL) -> float:
        """The share of the NDCG@10 gap between fusion and the oracle that ``arm`` closes."""
        t = self.tail
        gap = t[ORACLE_ALL]["ndcg"] - t[FUSION_ALL]["ndcg"]
        return (t[arm]["ndcg"] - t[FUSION_ALL]["ndcg"]) / gap if gap > 0 else float("nan")

    def checks(self) -> dict[str, bool]:
        """The issue's bars that this simulation measures."""
        t = self.tail
        if not all(a in t for a in ARMS):
            return {}
        raw = [a for a in t if a.startswith("model:") and "raw" in a]
        return {f"the learned ranking beats {a} (trained without debiasing)": t[RANKER_ALL]["ndcg"] > t[a]["ndcg"]
                for a in raw} | {
            "the learned ranking closes at least half the NDCG@10 gap between fusion and the oracle":
                self.gap_closed() >= 0.5,
            "the page-rewarded policy's page recall within 2 points of every strategy at its largest":
                t[LEARNED]["recall"] >= t[RANKER_ALL]["recall"] - 0.02,
            "with at most half its candidates": t[LEARNED]["candidates"] <= 0.5 * t[RANKER_ALL]["candidates"],
        }


async def run_search_simulation(
    target: str, policy: str = "retrieval", queries: int = 20_000, report_every: int = 1000,
    concurrency: int = 16, n_items: int = 100_000, world_seed: int = 42, seed: int = 1, eta: float = 1.0,
    page_size: int = 10, ladders: dict[str, tuple[int, ...]] | None = None, tail: int = 5000,
    out: TextIO | None = sys.stdout, models: Sequence[str] = (),
) -> SearchSimulation:
    """Drives ``queries`` queries through every arm; returns per-window and last-``tail`` figures."""
    ladders = dict(ladders or DEMO_LADDERS)
    all_largest = {s: max(b) for s, b in ladders.items()}
    world = MusicWorld(n_items=n_items, seed=world_seed)
    pops = {it["id"]: it["popularity"] for it in world.items}
    rng = random.Random(seed)
    sim = SearchSimulation(params={"queries": queries, "items": n_items, "eta": eta, "page_size": page_size,
                                   "seed": seed, "world_seed": world_seed})
    windows: dict[str, Means] = {}
    tails: dict[str, Means] = {}
    started = time.perf_counter()
    arms = [*ARMS, *(f"model:{m}@all" for m in models)]
    if out:
        print(f"{'queries':>8} | " + " | ".join(f"{a:>15}" for a in arms) + "   (NDCG@10; learned: page recall, "
              "candidates)", file=out)
    async with AsyncLtrrClient(target, timeout=60) as client:
        done = 0
        while done < queries:
            n = min(concurrency, queries - done)
            batch = [world.query(rng) for _ in range(n)]
            calls: list[Any] = []
            for q in batch:
                emb = q.embedding or []
                calls.append(client.search(policy, q.text, page_size=page_size, embedding=emb))
                calls.append(client.search(policy, q.text, page_size=page_size, embedding=emb, fixed_plan=all_largest))
                req = retrieval_pb2.RetrieveRequest(policy=policy, query=q.text, query_embedding=emb)
                req.fixed_plan.update(all_largest)
                calls.append(client.retrieval.Retrieve(req))
                for m in models:
                    calls.append(client.search(policy, q.text, page_size=page_size, embedding=emb,
                                               fixed_plan=all_largest, order="model", model=m))
            responses = iter(await asyncio.gather(*calls))
            events = []
            for i, q in enumerate(batch):
                learned, ranked, union = next(responses), next(responses), next(responses)
                by_model = {f"model:{m}@all": next(responses) for m in models}
                union_ids = [c.item_id for c in union.candidates]
                union_grades = dict(zip(union_ids, grades(world, q, union_ids), strict=True))
                learned_ids = [r.item_id for r in learned.results]
                extra = [i for i in learned_ids if i not in union_grades]
                union_grades.update(zip(extra, grades(world, q, extra), strict=True))
                ideal = dcg(sorted(union_grades.values(), reverse=True)[:page_size]) or 1.0
                pages = {
                    LEARNED: learned_ids,
                    RANKER_ALL: [r.item_id for r in ranked.results],
                    FUSION_ALL: union_ids[:page_size],
                    POPULARITY_ALL: sorted(union_ids, key=lambda x: -pops.get(x, 0.0))[:page_size],
                    ORACLE_ALL: sorted(union_ids, key=lambda x: -union_grades[x])[:page_size],
                } | {arm: [r.item_id for r in resp.results] for arm, resp in by_model.items()}
                drawn = {LEARNED: sum(s.returned for s in learned.strategies),
                         RANKER_ALL: sum(s.returned for s in ranked.strategies)}
                in_tail = done + i >= queries - tail
                for arm, ids in pages.items():
                    gains = [union_grades.get(x, 0) for x in ids]
                    engaged = clicks(gains, eta, rng)
                    rr = next((1.0 / (k + 1) for k, x in enumerate(ids) if x == q.target), 0.0)
                    figures = {"ndcg": dcg(gains) / ideal, "mrr": rr, "clicks": float(len(engaged)),
                               "recall": float(q.target in ids),
                               "candidates": float(drawn.get(arm, sum(s.returned for s in union.strategies)))}
                    windows.setdefault(arm, Means("pages")).add(**figures)
                    if in_tail:
                        tails.setdefault(arm, Means("pages")).add(**figures)
                    event_id = {LEARNED: learned.event_id, RANKER_ALL: ranked.event_id,
                                FUSION_ALL: union.event_id}.get(arm)
                    if event_id:
                        events.append(feedback_pb2.RewardEvent(event_id=event_id, value=1.0,
                                                               engaged_item_ids=[ids[k] for k in engaged]))
            await send_rewards(client, events)
            done += n
            if done % report_every < n or done == queries:
                row = {arm: w.summary() for arm, w in windows.items()}
                sim.rows.append(row | {"_": {"queries": float(done)}})
                if out:
                    learned_row = row[LEARNED]
                    print(f"{done:>8} | " + " | ".join(f"{row[a]['ndcg']:>15.3f}" for a in arms)
                          + f"   {learned_row['recall']:.3f}, {learned_row['candidates']:.0f}", file=out)
                windows = {}
    sim.tail = {arm: w.summary() for arm, w in tails.items()}
    if out:
        print(f"\nlast {min(tail, queries)} queries ({queries / (time.perf_counter() - started):.0f} queries/s, "
              f"eta {eta}):", file=out)
        for arm in arms:
            t = sim.tail[arm]
            print(f"  {arm:<15} NDCG@10 {t['ndcg']:.3f}  MRR {t['mrr']:.3f}  clicks/page {t['clicks']:.3f}  "
                  f"page recall {t['recall']:.3f}  candidates {t['candidates']:.0f}", file=out)
        print(f"  the learned ranking closes {sim.gap_closed():.0%} of the NDCG@10 gap between fusion and the "
              "oracle", file=out)
        for check, ok in sim.checks().items():
            print(f"  [{'x' if ok else ' '}] {check}", file=out)
    return sim


def plot(sim: SearchSimulation, path: str) -> None:
    """NDCG@10, MRR, clicks per page, the target's recall on the page and the candidates drawn, over
    time per arm, as a PNG with the run's parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["_"]["queries"] for r in sim.rows]
    arms = [a for a in sim.rows[-1] if a != "_"] if sim.rows else list(ARMS)
    fig, grid = plt.subplots(2, 3, figsize=(15, 8.4))
    axes = list(grid.flat)
    panels = (("ndcg", "NDCG@10 (true relevance)", arms), ("mrr", "MRR of the query's target", arms),
              ("clicks", "engagements per page", arms), ("recall", "the query's target on the page", arms),
              # Only the policy's plan and the largest plan draw different candidates: the other
              # arms order the largest plan's union.
              ("candidates", "candidates drawn per query", [LEARNED, RANKER_ALL]))
    for ax, (key, title, shown) in zip(axes, panels, strict=False):
        for arm in shown:
            label = "every strategy at its largest" if key == "candidates" and arm == RANKER_ALL else arm
            ax.plot(xs, [r[arm][key] if arm in r else float("nan") for r in sim.rows], label=label,
                    linestyle="--" if arm == ORACLE_ALL else "-")
        ax.set_title(title)
        ax.set_xlabel("queries")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean per page, per window")
    axes[3].set_ylabel("mean per page, per window")
    axes[4].set_ylabel("mean per query, per window")
    axes[4].set_ylim(bottom=0)
    axes[4].legend()
    axes[5].axis("off")
    axes[0].legend()
    p = sim.params
    fig.suptitle(f"ltrr simulate --mode search: {p['queries']} queries, {p['items']} items, position bias "
                 f"1/k^{p['eta']}, page {p['page_size']}, seed {p['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
