"""Does ``ltrr tune`` pick a configuration that really learns best? Checked against live runs.

    python -m bench.bench_tune [--problem logistic10] [--seeds 2] [--first-seed 1] [--scale 1.0]
                               [--logging default] [--streams 3]

Per seed: the problem runs through `ltrr serve` with one logging policy (``--logging``, a
candidate of ``bench_bandits``), then ``TunePolicy`` replays its default grid over that log and
ranks it. Then every configuration of the grid runs live on a fresh server, side by side on
``--streams`` new streams of the same world (one server each), and its true regret over the last
quarter of the run is measured, averaged over the streams: one stream's figure differs from
another's by about as much as the grid's configurations differ. Reported: the true regret of
what tune recommends (``TuneResult.recommended``) against the best true regret of the grid (the
issue's bar: within 10%), the same for the highest estimate, and how the two rankings agree.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Any

import grpc
import numpy as np

from bench.bandit_worlds import PROBLEMS
from bench.bench_bandits import CANDIDATES, run_problem
from bench.common import LtrrProcess, save
from ltrr.v1 import admin_pb2, admin_pb2_grpc
from ltrr_client.evaluation import describe, enum_text


def toml_of(spec: admin_pb2.PolicySpec) -> str:
    """A candidate's learning fields as a bench_bandits candidate (TOML)."""
    interactions = ", ".join(f'"{i}"' for i in spec.interactions)
    return (f'exploration = "{enum_text(spec, "exploration")}"\nepsilon = {spec.epsilon!r}\n'
            f"squarecb_gamma_scale = {spec.squarecb_gamma_scale!r}\nlearning_rate = {spec.learning_rate!r}\n"
            f'power_t = {spec.power_t!r}\ninteractions = [{interactions}]\ncb_type = "{enum_text(spec, "cb_type")}"\n'
            f'optimizer = "{enum_text(spec, "optimizer")}"\nreward_scale = {spec.reward_scale or 1.0!r}')


async def tune_logged(server: LtrrProcess, out: dict[str, Any]) -> None:
    await asyncio.sleep(2.0)  # the last joins reach the log (group commits)
    stub = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(server.target))
    started = time.perf_counter()
    result = None
    for update in stub.TunePolicy(admin_pb2.TunePolicyRequest(name="logged"), timeout=3600):
        if update.HasField("result"):
            result = update.result
    out["result"], out["seconds"] = result, time.perf_counter() - started


def split_half_pick(per_stream: dict[str, list[float]], bar: float = 1.10) -> dict[str, float]:
    """The bar's ceiling with this many streams: a pick made knowing half the streams' true regrets
    (the configuration best on them), judged on the other half against that half's best; over every
    split. No replay of one log can be expected to pick better than live runs of every configuration.

    >>> split_half_pick({"a": [1.0, 1.0], "b": [2.0, 2.0]})
    {'mean_ratio': 1.0, 'share_within_bar': 1.0}
    """
    n = len(next(iter(per_stream.values())))
    ratios = []
    for half in itertools.combinations(range(n), n // 2):
        other = [i for i in range(n) if i not in half]
        pick = min(per_stream, key=lambda c: statistics.mean(per_stream[c][i] for i in half))
        judged = {c: statistics.mean(v[i] for i in other) for c, v in per_stream.items()}
        best = min(judged.values())
        ratios.append(judged[pick] / best if best > 0 else 1.0)
    return {"mean_ratio": round(statistics.mean(ratios), 3),
            "share_within_bar": round(sum(r <= bar for r in ratios) / len(ratios), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", default="logistic10")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=1, help="seeds run from this one on")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--logging", default="default", choices=list(CANDIDATES))
    ap.add_argument("--streams", type=int, default=3, help="live streams each configuration's true regret is "
                                                             "averaged over")
    args = ap.parse_args()
    problem = PROBLEMS[args.problem]
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        tuned: dict[str, Any] = {}
        logged = asyncio.run(run_problem(problem, seed, {"logged": CANDIDATES[args.logging]}, args.scale,
                                         before_stop=lambda s, out=tuned: tune_logged(s, out)))
        result = tuned["result"]
        grid = {f"c{i}": toml_of(c.spec) for i, c in enumerate(result.candidates)}
        # The log's own world, new reward streams: the truth of the traffic tune was given.
        streams = [asyncio.run(run_problem(problem, seed, grid, args.scale, stream=k))
                   for k in range(1, args.streams + 1)]
        true = {name: statistics.mean(live.tail_ratio(name) for live in streams) for name in grid}
        best = min(true, key=true.__getitem__)
        best_true = true[best]
        recommended = next(f"c{i}" for i, c in enumerate(result.candidates)
                           if describe(c.spec) == describe(result.recommended))
        picked = true[recommended]
        est = [c.estimate.value for c in result.candidates]
        rank_corr = float(np.corrcoef(np.argsort(np.argsort([-e for e in est])),
                                      np.argsort(np.argsort(list(true.values()))))[0, 1])
        run = {
            "seed": seed, "logged_tail_ratio": round(logged.tail_ratio("logged"), 3),
            "tune_seconds": round(tuned["seconds"], 1), "events": result.events,
            "picked": describe(result.recommended), "picked_true_ratio": round(picked, 3),
            "reason": result.reason, "highest_estimate": describe(result.candidates[0].spec),
            "highest_estimate_true_ratio": round(true["c0"], 3),
            "highest_estimate_over_best": round(true["c0"] / best_true, 3) if best_true > 0 else 1.0,
            "best_true_ratio": round(best_true, 3),
            "best_true": describe(result.candidates[list(true).index(best)].spec),
            "picked_over_best": round(picked / best_true, 3) if best_true > 0 else 1.0,
            # Stream by stream, the recommendation's regret minus the grid's best (by mean): how
            # much of the ratio the streams agree on.
            "picked_minus_best_per_stream": [round(live.tail_ratio(recommended) - live.tail_ratio(best), 3)
                                             for live in streams],
            "rank_correlation": round(rank_corr, 2),
            "split_half_pick": split_half_pick({name: [live.tail_ratio(name) for live in streams] for name in grid}),
            "grid": [{"config": describe(c.spec), "snips": round(c.estimate.value, 4),
                      "lower": round(c.estimate.lower, 4), "versus_live": round(c.versus_live.value, 4),
                      "versus_live_se": round(c.versus_live.std_error, 5), "true_ratio": round(true[f"c{i}"], 3),
                      "true_per_stream": [round(live.tail_ratio(f"c{i}"), 3) for live in streams]}
                     for i, c in enumerate(result.candidates)],
            "live_mean_reward": round(result.logged.value, 4),
        }
        runs.append(run)
        print(f"seed {seed}: recommended {run['picked']} true {picked:.3f}, best {best_true:.3f} "
              f"({run['picked_over_best']:.2f}x); highest estimate {run['highest_estimate']} "
              f"({run['highest_estimate_over_best']:.2f}x); rank correlation {rank_corr:.2f}, "
              f"tune {tuned['seconds']:.0f}s; a pick from half the streams, judged on the other half: "
              f"{run['split_half_pick']['mean_ratio']:.2f}x; {result.reason}")
    save("tune", {"problem": args.problem, "logging": args.logging, "scale": args.scale, "streams": args.streams,
                  "runs": runs,
                  "median_picked_over_best": statistics.median(r["picked_over_best"] for r in runs)})


if __name__ == "__main__":
    main()
